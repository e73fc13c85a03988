//! The frames a warm process reads and writes on stdin/stdout
//! (docs/worker-api.md has the same table, for function authors).
//!
//! Request, worker to process:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | length of the rest, big-endian |
//! | 4 | function_id |
//! | 8 | request_id |
//! | 8 | key |
//! | 4 | workflow_id |
//! | 1 | step |
//! | 3 | zero (reserved) |
//! | .. | payload |
//!
//! Answer, process to worker:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | length of the rest, big-endian |
//! | 8 | request_id (the request's) |
//! | 1 | status: 0 the payload is the output, 1 the function failed and the payload says why (UTF-8) |
//! | .. | payload |
//!
//! All integers big-endian, like the wire protocol.

use super::Call;

/// Bytes of a request frame before its payload, after the length.
pub const REQUEST_FIXED: usize = 4 + 8 + 8 + 4 + 1 + 3;
/// Bytes of an answer frame before its payload, after the length.
pub const ANSWER_FIXED: usize = 8 + 1;

pub const STATUS_OK: u8 = 0;
pub const STATUS_FAILED: u8 = 1;

/// The request frame for `call`, length included.
pub fn request(call: &Call) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + REQUEST_FIXED + call.payload.len());
    frame.extend_from_slice(&((REQUEST_FIXED + call.payload.len()) as u32).to_be_bytes());
    frame.extend_from_slice(&call.function_id.to_be_bytes());
    frame.extend_from_slice(&call.request_id.to_be_bytes());
    frame.extend_from_slice(&call.key.to_be_bytes());
    frame.extend_from_slice(&call.workflow_id.to_be_bytes());
    frame.push(call.step);
    frame.extend_from_slice(&[0; 3]);
    frame.extend_from_slice(&call.payload);
    frame
}

/// An answer frame's body (after the length), read.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub request_id: u64,
    pub ok: bool,
    pub payload: Vec<u8>,
}

/// Parses an answer frame's body (the `length` bytes after the length).
pub fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    if body.len() < ANSWER_FIXED {
        return Err(format!(
            "an answer frame of {} bytes; the framing needs at least {ANSWER_FIXED} (docs/worker-api.md)",
            body.len()
        ));
    }
    let ok = match body[8] {
        STATUS_OK => true,
        STATUS_FAILED => false,
        other => return Err(format!("answer status {other}: 0 (output) or 1 (failed)")),
    };
    Ok(Answer {
        request_id: u64::from_be_bytes(body[..8].try_into().expect("8 bytes")),
        ok,
        payload: body[ANSWER_FIXED..].to_vec(),
    })
}

/// An answer frame, length included (what a process writes; for tests and
/// for processes written in Rust).
pub fn answer(request_id: u64, ok: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + ANSWER_FIXED + payload.len());
    frame.extend_from_slice(&((ANSWER_FIXED + payload.len()) as u32).to_be_bytes());
    frame.extend_from_slice(&request_id.to_be_bytes());
    frame.push(if ok { STATUS_OK } else { STATUS_FAILED });
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames_carry_the_ids_then_the_payload() {
        let call = Call {
            function_id: 7,
            request_id: 0x0102_0304_0506_0708,
            key: 9,
            workflow_id: 100,
            step: 2,
            payload: b"hi".to_vec(),
        };
        let f = request(&call);
        assert_eq!(f.len(), 4 + REQUEST_FIXED + 2);
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
        assert_eq!(&f[4..8], &7u32.to_be_bytes());
        assert_eq!(&f[8..16], &call.request_id.to_be_bytes());
        assert_eq!(f[4 + 24], 2);
        assert_eq!(&f[f.len() - 2..], b"hi");
    }

    #[test]
    fn answers_round_trip_and_bad_ones_are_named() {
        let f = answer(5, false, b"boom");
        let parsed = parse_answer(&f[4..]).unwrap();
        assert_eq!(
            parsed,
            Answer {
                request_id: 5,
                ok: false,
                payload: b"boom".to_vec()
            }
        );
        assert!(parse_answer(&[0; 3]).unwrap_err().contains("at least"));
        let mut bad = answer(5, true, b"");
        bad[12] = 9;
        assert!(parse_answer(&bad[4..]).unwrap_err().contains("status 9"));
    }
}
