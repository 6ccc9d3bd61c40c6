//! `LULL_KAFKA_CONFIG_FILE`: the Java-style properties file a Kafka service hands out
//! (`client.properties` from Confluent Cloud, MSK, Aiven; what kcat takes with `-F` and Kafka's
//! tools with `--command-config`), read into librdkafka properties for every client.
//!
//! The format is `java.util.Properties`: `key=value`, `key: value` or `key value`; `#` and `!`
//! start comments; a line ending in an odd number of backslashes continues on the next; `\t`,
//! `\n`, `\\`, `\uXXXX` and an escaped separator are unescaped. A file written for Java clients
//! also works: `sasl.jaas.config` with a `PlainLoginModule` or `ScramLoginModule` gives
//! `sasl.username` and `sasl.password`, and the few Java-only client keys ([`JAVA_ONLY`]) are left
//! out, each named in the start-up log.

/// Keys of Java clients that librdkafka has no use for: left out of the clients, and named.
pub const JAVA_ONLY: &[&str] = &[
    "client.dns.lookup",
    "key.serializer",
    "value.serializer",
    "key.deserializer",
    "value.deserializer",
    "sasl.jaas.config",
    "sasl.login.callback.handler.class",
    "sasl.client.callback.handler.class",
];

/// Key prefixes of other Confluent clients' settings found in the same files (Schema Registry).
const JAVA_ONLY_PREFIXES: &[&str] = &["schema.registry.", "basic.auth."];

/// One property of the file: its line (from 1), key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// The line its key starts on.
    pub line: usize,
    /// The key.
    pub key: String,
    /// The value, unescaped.
    pub value: String,
}

/// What a properties file gives: the properties librdkafka takes, in file order (a later key wins
/// when applied), and the Java-only keys left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    /// Properties for librdkafka.
    pub properties: Vec<Property>,
    /// Keys left out (Java-only), with their lines.
    pub left_out: Vec<(usize, String)>,
}

/// Reads a properties file's text.
pub fn read(text: &str) -> Read {
    let mut out = Read::default();
    for p in parse(text) {
        if p.key == "sasl.jaas.config" {
            for (key, value) in jaas_credentials(&p.value) {
                out.properties.push(Property {
                    line: p.line,
                    key: key.to_string(),
                    value,
                });
            }
        }
        if JAVA_ONLY.contains(&p.key.as_str())
            || JAVA_ONLY_PREFIXES.iter().any(|x| p.key.starts_with(x))
        {
            out.left_out.push((p.line, p.key));
        } else {
            out.properties.push(p);
        }
    }
    out
}

/// The raw `key = value` pairs of a `java.util.Properties` text.
fn parse(text: &str) -> Vec<Property> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, first)) = lines.next() {
        let mut logical = first.trim_start().to_string();
        if logical.is_empty() || logical.starts_with('#') || logical.starts_with('!') {
            continue;
        }
        while ends_with_odd_backslashes(&logical) {
            logical.pop();
            match lines.next() {
                Some((_, next)) => logical.push_str(next.trim_start()),
                None => break,
            }
        }
        let (key, value) = split(&logical);
        if key.is_empty() {
            continue;
        }
        out.push(Property {
            line: index + 1,
            key: unescape(key),
            value: unescape(value),
        });
    }
    out
}

fn ends_with_odd_backslashes(s: &str) -> bool {
    s.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

/// The key and the raw value: the key ends at the first unescaped `=`, `:` or whitespace; then
/// whitespace, at most one `=` or `:`, and whitespace again are skipped.
fn split(line: &str) -> (&str, &str) {
    let mut escaped = false;
    let mut end = line.len();
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '=' || c == ':' || c.is_whitespace() {
            end = i;
            break;
        }
    }
    let key = &line[..end];
    let mut rest = line[end..].trim_start();
    if let Some(r) = rest.strip_prefix(['=', ':']) {
        rest = r.trim_start();
    }
    (key, rest)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(u) => out.push(u),
                    None => {
                        out.push_str("\\u");
                        out.push_str(&hex);
                    }
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// `username` and `password` of a `sasl.jaas.config` with a PLAIN or SCRAM login module, as
/// librdkafka's `sasl.username` and `sasl.password`.
fn jaas_credentials(jaas: &str) -> Vec<(&'static str, String)> {
    if !(jaas.contains("PlainLoginModule") || jaas.contains("ScramLoginModule")) {
        return Vec::new();
    }
    let option = |name: &str| {
        let at = jaas.find(&format!("{name}="))? + name.len() + 1;
        let rest = &jaas[at..];
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let inner = &rest[1..];
        Some(inner[..inner.find(quote)?].to_string())
    };
    [("sasl.username", "username"), ("sasl.password", "password")]
        .into_iter()
        .filter_map(|(key, name)| Some((key, option(name)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(r: &Read) -> Vec<(&str, &str)> {
        r.properties
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect()
    }

    #[test]
    fn a_confluent_cloud_file_reads_as_it_is_meant() {
        let text = "\
# Required connection configs for Kafka producer, consumer, and admin
bootstrap.servers=pkc-1234.eu-west-1.aws.confluent.cloud:9092
security.protocol=SASL_SSL
sasl.mechanisms=PLAIN
sasl.username=ABCDEFGH
sasl.password=s3cr3t/with=equals

! Best practice for higher availability
session.timeout.ms=45000
client.dns.lookup=use_all_dns_ips
schema.registry.url=https://psrc-1.aws.confluent.cloud
";
        let r = read(text);
        assert_eq!(
            pairs(&r),
            [
                (
                    "bootstrap.servers",
                    "pkc-1234.eu-west-1.aws.confluent.cloud:9092"
                ),
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "PLAIN"),
                ("sasl.username", "ABCDEFGH"),
                ("sasl.password", "s3cr3t/with=equals"),
                ("session.timeout.ms", "45000"),
            ]
        );
        assert_eq!(
            r.left_out,
            [
                (10, "client.dns.lookup".to_string()),
                (11, "schema.registry.url".to_string())
            ]
        );
        assert_eq!(r.properties[4].line, 6);
    }

    #[test]
    fn a_java_clients_jaas_line_gives_the_credentials() {
        let r = read(
            "sasl.mechanism : SCRAM-SHA-512\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n  \
             username=\"lull\" password='p\\u00e4ss';\n",
        );
        assert_eq!(
            pairs(&r),
            [
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "lull"),
                ("sasl.password", "päss"),
            ]
        );
        assert_eq!(r.left_out, [(2, "sasl.jaas.config".to_string())]);
    }

    #[test]
    fn separators_escapes_and_continuations_follow_java() {
        let r = read("a b\nc:d\n  e = f  \\\n   g\nh\\=i=j\\tk\n\\\nlast\\");
        assert_eq!(
            pairs(&r),
            [
                ("a", "b"),
                ("c", "d"),
                ("e", "f  g"),
                ("h=i", "j\tk"),
                ("last", "")
            ]
        );
    }
}
