//! Tests of `fragment`.

use super::*;

fn fragment(m: RawMessage<'_>, max: usize) -> Result<Fragment, Invalid> {
    let rules = Rules {
        max_fragment_bytes: max,
        bypass: None,
        channels: Vec::new(),
    };
    match parse(m, &rules)? {
        Parsed::Fragment(f) => Ok(f),
        Parsed::Signal(s) => panic!("a signal, not a fragment: {s:?}"),
        Parsed::Amend(a) => panic!("an amend, not a fragment: {a:?}"),
    }
}

fn msg<'a>(key: Option<&'a [u8]>, value: &'a [u8]) -> RawMessage<'a> {
    RawMessage {
        key,
        value: Some(value),
        event_id_header: None,
        offset: 7,
        ts: 1000,
    }
}

#[test]
fn valid_fragment_keeps_bytes_and_reads_fields() {
    let value = br#"{"text":"hi","correlation_id":"c-1","event_id":"e-1","extra":[1,2]}"#;
    let f = fragment(msg(Some(b"user-1"), value), 1024).unwrap();
    assert_eq!(&*f.key, "user-1");
    assert_eq!(f.value(), &value[..]);
    assert_eq!(f.text(), Some("hi"));
    assert_eq!(f.correlation_id(), Some("c-1"));
    assert_eq!(f.event_id(), Some("e-1"));
    assert_eq!((f.offset, f.ts), (7, 1000));
}

#[test]
fn user_id_is_the_key_when_the_message_has_none() {
    let f = fragment(msg(None, br#"{"user_id":"u-9","text":"x"}"#), 1024).unwrap();
    assert_eq!(&*f.key, "u-9");
    let f = fragment(msg(Some(b""), br#"{"user_id":"u-9"}"#), 1024).unwrap();
    assert_eq!(&*f.key, "u-9");
}

#[test]
fn non_string_fields_are_ignored_not_rejected() {
    let f = fragment(msg(Some(b"k"), br#"{"text":5,"event_id":null}"#), 1024).unwrap();
    assert_eq!(f.text(), None);
    assert_eq!(f.event_id(), None);
}

#[test]
fn event_id_header_wins_over_the_field() {
    let mut m = msg(Some(b"k"), br#"{"event_id":"field"}"#);
    m.event_id_header = Some(b"header");
    assert_eq!(fragment(m, 1024).unwrap().event_id(), Some("header"));
}

#[test]
fn invalid_inputs_are_classified() {
    assert!(matches!(
        fragment(msg(Some(b"k"), b"not json"), 1024),
        Err(Invalid::NotJson(_))
    ));
    assert!(matches!(
        fragment(msg(Some(b"k"), b""), 1024),
        Err(Invalid::NotJson(_))
    ));
    assert!(matches!(
        fragment(msg(Some(b"k"), b"{\"a\":1} trailing"), 1024),
        Err(Invalid::NotJson(_))
    ));
    assert_eq!(
        fragment(msg(Some(b"k"), b"[1,2]"), 1024),
        Err(Invalid::NotObject)
    );
    assert_eq!(
        fragment(msg(Some(b"k"), b"\"s\""), 1024),
        Err(Invalid::NotObject)
    );
    assert_eq!(
        fragment(msg(None, br#"{"text":"x"}"#), 1024),
        Err(Invalid::NoKey)
    );
    assert_eq!(
        fragment(msg(None, br#"{"user_id":7}"#), 1024),
        Err(Invalid::NoKey)
    );
    assert_eq!(
        fragment(msg(Some(&[0xff, 0xfe]), b"{}"), 1024),
        Err(Invalid::KeyNotUtf8)
    );
    assert_eq!(
        fragment(msg(Some(b"k"), &[b' '; 11]), 10),
        Err(Invalid::TooLarge {
            size: 11,
            limit: 10
        })
    );
}

#[test]
fn plain_fields_are_read_in_place_and_escaped_ones_unescaped_once() {
    let value = br#"{"text":"plain","correlation_id":"tab\there","event_id":"\u00e9"}"#;
    let mut m = msg(Some(b"k"), value);
    let f = fragment(m, 1024).unwrap();
    assert_eq!(f.text(), Some("plain"));
    assert_eq!(f.correlation_id(), Some("tab\there"));
    assert_eq!(f.event_id(), Some("\u{e9}"));
    assert_eq!(f.value(), &value[..]);
    assert_eq!(f.size(), value.len());
    // One block: the value, then only the two unescaped fields ("tab\there" and "é").
    assert_eq!(f.data.len(), value.len() + "tab\there".len() + "é".len());

    m.event_id_header = Some("from-header".as_bytes());
    let g = fragment(m, 1024).unwrap();
    assert_eq!(g.event_id(), Some("from-header"));
    assert_ne!(f, g);

    let plain = Fragment::new("k", 1, 2, br#"{"text":"x"}"#, Fields::default());
    assert_eq!((plain.text(), plain.event_id()), (None, None));
    let copied = Fragment::new(
        "k",
        1,
        2,
        br#"{"text":"x"}"#,
        Fields {
            text: Some("x"),
            ..Fields::default()
        },
    );
    assert_eq!(copied.text(), Some("x"));
    assert_ne!(plain, copied, "equality is by what a fragment reads");
}

#[test]
fn a_repeated_field_is_valid_json_and_the_last_one_wins() {
    let value = br#"{"text":"first","user_id":"a","text":"second","user_id":"b","x":1,"x":2}"#;
    let f = fragment(msg(None, value), 1024).unwrap();
    assert_eq!(&*f.key, "b");
    assert_eq!(f.text(), Some("second"));
    assert_eq!(f.value(), &value[..], "the bytes are kept as they came");
    let escaped = br#"{"te\u0078t":"escaped name","user_id":"u"}"#;
    assert_eq!(
        fragment(msg(None, escaped), 1024).unwrap().text(),
        Some("escaped name")
    );
}

#[test]
fn a_string_signal_field_makes_a_signal_and_an_unknown_one_a_dead_letter() {
    let rules = Rules {
        max_fragment_bytes: 1024,
        bypass: None,
        channels: Vec::new(),
    };
    let s = parse(msg(None, br#"{"user_id":"u","signal":"typing"}"#), &rules).unwrap();
    assert_eq!(
        s,
        Parsed::Signal(Signal {
            key: "u".into(),
            kind: SignalKind::Typing,
            offset: 7,
            ts: 1000
        })
    );
    for (name, kind) in [
        ("stopped", SignalKind::Stopped),
        ("flush", SignalKind::Flush),
    ] {
        let v = format!(r#"{{"signal":"{name}"}}"#);
        match parse(msg(Some(b"k"), v.as_bytes()), &rules).unwrap() {
            Parsed::Signal(s) => assert_eq!(s.kind, kind),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        parse(msg(Some(b"k"), br#"{"signal":"dancing"}"#), &rules),
        Err(Invalid::UnknownSignal("dancing".into()))
    );
    assert_eq!(
        parse(msg(None, br#"{"signal":"typing"}"#), &rules),
        Err(Invalid::NoKey),
        "a signal needs its user like a fragment"
    );
    // A signal field that is not a string is just a field of a fragment.
    assert!(matches!(
        parse(msg(Some(b"k"), br#"{"signal":1,"text":"x"}"#), &rules),
        Ok(Parsed::Fragment(_))
    ));
}

#[test]
fn final_and_the_bypass_pattern_mark_the_fragment() {
    let rules = Rules {
        max_fragment_bytes: 1024,
        bypass: Some(regex::Regex::new("^/").unwrap()),
        channels: Vec::new(),
    };
    let get = |v: &[u8]| match parse(msg(Some(b"k"), v), &rules).unwrap() {
        Parsed::Fragment(f) => f,
        other => panic!("{other:?}"),
    };
    assert!(get(br#"{"text":"done","final":true}"#).is_final);
    assert!(!get(br#"{"text":"done","final":"true"}"#).is_final);
    assert!(!get(br#"{"text":"done","final":false}"#).is_final);
    assert!(get(br#"{"text":"/help"}"#).bypass);
    assert!(!get(br#"{"text":"help /me"}"#).bypass);
    assert!(
        !get(br#"{"note":"/help"}"#).bypass,
        "the pattern applies to text only"
    );
}

#[test]
fn missing_value_is_not_json() {
    let m = RawMessage {
        key: Some(b"k"),
        value: None,
        event_id_header: None,
        offset: 0,
        ts: 0,
    };
    assert!(matches!(fragment(m, 10), Err(Invalid::NotJson(_))));
}

#[test]
fn a_channel_selects_its_overrides_and_its_own_bypass_pattern() {
    let rules = Rules {
        max_fragment_bytes: 1024,
        bypass: Some(regex::Regex::new("^/").unwrap()),
        channels: vec![
            ChannelRule {
                name: "WHATSAPP".into(),
                bypass: None,
            },
            ChannelRule {
                name: "WEB_CHAT".into(),
                bypass: Some(regex::Regex::new("^!").unwrap()),
            },
        ],
    };
    let get = |v: &[u8]| match parse(msg(Some(b"k"), v), &rules).unwrap() {
        Parsed::Fragment(f) => (f.channel, f.bypass),
        other => panic!("{other:?}"),
    };
    assert_eq!(get(br#"{"text":"/help","channel":"whatsapp"}"#), (1, true));
    // Upper-cased, `-` as `_`; this channel's own pattern replaces the global one.
    assert_eq!(get(br#"{"text":"/help","channel":"web-chat"}"#), (2, false));
    assert_eq!(get(br#"{"text":"!help","channel":"web-chat"}"#), (2, true));
    // No channel, a channel without overrides, or not a string: the global settings.
    assert_eq!(get(br#"{"text":"/help"}"#), (0, true));
    assert_eq!(get(br#"{"text":"hi","channel":"sms"}"#), (0, false));
    assert_eq!(get(br#"{"text":"hi","channel":7}"#), (0, false));
}

#[test]
fn edit_and_delete_signals_name_their_target_or_go_to_the_dlq() {
    let rules = Rules {
        max_fragment_bytes: 1024,
        ..Rules::default()
    };
    let edit = br#"{"user_id":"u","signal":"edit","target":"e-1","text":"fixed"}"#;
    match parse(msg(None, edit), &rules).unwrap() {
        Parsed::Amend(a) => {
            assert_eq!((&*a.message.key, &*a.target), ("u", "e-1"));
            assert_eq!(a.change, Change::Edited("fixed".into()));
            assert_eq!(a.message.value(), &edit[..], "the message kept whole");
        }
        other => panic!("{other:?}"),
    }
    match parse(
        msg(None, br#"{"user_id":"u","signal":"delete","target":"e-1"}"#),
        &rules,
    ) {
        Ok(Parsed::Amend(a)) => assert_eq!(a.change, Change::Deleted),
        other => panic!("{other:?}"),
    }
    for bad in [
        &br#"{"user_id":"u","signal":"edit","text":"no target"}"#[..],
        br#"{"user_id":"u","signal":"edit","target":"e-1"}"#,
        br#"{"user_id":"u","signal":"delete"}"#,
        br#"{"user_id":"u","signal":"delete","target":7}"#,
    ] {
        let err = parse(msg(None, bad), &rules).unwrap_err();
        assert_eq!(err.label(), "bad_amend", "{err}");
    }
}
