//! Kafka message headers as bytes, read and written through librdkafka's C API.
//!
//! A header name is bytes on the wire: any producer can send one that is not UTF-8. rdkafka's
//! safe `Headers::iter` builds a `&str` name with an `unwrap`, which panics on such a name, so
//! lull never calls it on input: it reads names here, as bytes, and writes them back the same
//! way (the dead-letter topic keeps the original headers exactly: name bytes, value or null).
//!
//! Limit: librdkafka hands names out NUL-terminated, so a name with an embedded NUL byte is read
//! up to that byte.

use std::ffi::CStr;

use rdkafka::bindings as rd;

use crate::model::wire::RawHeader;
use rdkafka::message::{BorrowedHeaders, Headers, OwnedHeaders};

fn native(headers: &BorrowedHeaders) -> *const rd::rd_kafka_headers_t {
    // `BorrowedHeaders` is rdkafka's zero-sized view of a native headers list: its address is
    // the list's (rdkafka converts the same way).
    (headers as *const BorrowedHeaders).cast()
}

/// Header number `idx` of `headers`, borrowed; `None` past the end.
fn get(headers: &BorrowedHeaders, idx: usize) -> Option<(&[u8], Option<&[u8]>)> {
    let mut name = std::ptr::null();
    let mut value = std::ptr::null();
    let mut size = 0usize;
    // SAFETY: `native` points at a live headers list for as long as `headers` is borrowed; the
    // out-pointers point at locals. librdkafka returns pointers into the list, valid for that
    // same borrow, and a NUL-terminated name.
    let err = unsafe {
        rd::rd_kafka_header_get_all(native(headers), idx, &mut name, &mut value, &mut size)
    };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
        return None;
    }
    // SAFETY: as above; the name is NUL-terminated and the value is `size` bytes when non-null.
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    let value =
        (!value.is_null()).then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
    Some((name, value))
}

/// Every header, in order, as bytes.
pub fn read(headers: &BorrowedHeaders) -> Vec<RawHeader> {
    (0..headers.count())
        .filter_map(|i| get(headers, i))
        .map(|(name, value)| RawHeader {
            name: name.to_vec(),
            value: value.map(<[u8]>::to_vec),
        })
        .collect()
}

/// The value of the last header named `name` (Kafka's convention for "the" value), if any and
/// not null.
pub fn last_value<'h>(headers: &'h BorrowedHeaders, name: &[u8]) -> Option<&'h [u8]> {
    (0..headers.count())
        .rev()
        .filter_map(|i| get(headers, i))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v)
}

/// Native headers for the producer, names and values exactly as given.
pub fn build(headers: &[RawHeader]) -> OwnedHeaders {
    let owned = OwnedHeaders::new_with_capacity(headers.len());
    let list = native(owned.as_borrowed()).cast_mut();
    for h in headers {
        let (value, size) = match &h.value {
            Some(v) => (v.as_ptr().cast(), v.len() as isize),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: `list` is the writable list `owned` holds (created just above, not shared);
        // librdkafka copies name and value, which live for the call.
        let err = unsafe {
            rd::rd_kafka_header_add(
                list,
                h.name.as_ptr().cast(),
                h.name.len() as isize,
                value,
                size,
            )
        };
        // Adding to a list created by rd_kafka_headers_new only fails on a read-only list.
        debug_assert_eq!(err, rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    }
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_name_bytes_and_null_values_round_trip() {
        let given = vec![
            RawHeader {
                name: vec![0xff, 0xfe, b'j', b'u', b'n', b'k'],
                value: Some(b"v".to_vec()),
            },
            RawHeader {
                name: b"x-trace".to_vec(),
                value: None,
            },
            RawHeader {
                name: b"empty".to_vec(),
                value: Some(Vec::new()),
            },
            RawHeader::new("event_id", "e-1"),
            RawHeader::new("event_id", "e-2"),
        ];
        let owned = build(&given);
        assert_eq!(read(owned.as_borrowed()), given);
        assert_eq!(
            last_value(owned.as_borrowed(), b"event_id"),
            Some(&b"e-2"[..])
        );
        assert_eq!(last_value(owned.as_borrowed(), b"x-trace"), None);
        assert_eq!(last_value(owned.as_borrowed(), b"absent"), None);
    }
}
