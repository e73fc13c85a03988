//! The functions compiled into the worker: echo, static, upper, reverse,
//! kv (memcached) and grayscale. They run inline on the worker's answer
//! thread, a batch at a time: no process, no connection.

use std::str::FromStr;

use anyhow::{bail, Result};

/// A function the runtime can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionKind {
    /// Answers with its input.
    Echo,
    /// Answers with a fixed small HTML page, whatever the input.
    Static,
    /// Upper-cases UTF-8 text; fails (ERROR 6) on anything else.
    Upper,
    /// Reverses UTF-8 text by characters; fails on anything else.
    Reverse,
    /// A key-value store in memcached: `GET key` answers the value,
    /// `SET key value` stores it (answers `STORED`), `DEL key` deletes it.
    Kv,
    /// Turns an image (PNG, or raw RGB as binary PPM) into a grayscale PNG.
    Grayscale,
}

const NAMES: &str = "echo, static, upper, reverse, kv, grayscale";

/// The page `static` serves.
pub const STATIC_PAGE: &str = "<!doctype html><html><head><title>faas</title></head><body><h1>Hello from a FaaS worker</h1></body></html>";

impl FromStr for FunctionKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "echo" => Ok(FunctionKind::Echo),
            "static" => Ok(FunctionKind::Static),
            "upper" => Ok(FunctionKind::Upper),
            "reverse" => Ok(FunctionKind::Reverse),
            "kv" => Ok(FunctionKind::Kv),
            "grayscale" => Ok(FunctionKind::Grayscale),
            other => bail!("unknown function `{other}`: this runtime serves: {NAMES}"),
        }
    }
}

/// Runs a function on `input`; `Err` is a function failure (ERROR 6).
pub fn invoke(
    function: FunctionKind,
    input: &[u8],
    kv: Option<&memcache::Client>,
) -> Result<Vec<u8>, String> {
    let text = || std::str::from_utf8(input).map_err(|e| format!("input is not UTF-8 text ({e})"));
    match function {
        FunctionKind::Echo => Ok(input.to_vec()),
        FunctionKind::Static => Ok(STATIC_PAGE.as_bytes().to_vec()),
        FunctionKind::Upper => Ok(text()?.to_uppercase().into_bytes()),
        FunctionKind::Reverse => Ok(text()?.chars().rev().collect::<String>().into_bytes()),
        FunctionKind::Kv => kv_command(
            kv.ok_or("this worker has no memcached: start it with --memcached ADDR:PORT")?,
            input,
        ),
        FunctionKind::Grayscale => grayscale(input),
    }
}

/// Decodes an image (format guessed from its bytes), converts it to 8-bit
/// luma, and encodes that as PNG.
fn grayscale(input: &[u8]) -> Result<Vec<u8>, String> {
    let image = image::load_from_memory(input)
        .map_err(|e| format!("not an image this worker reads (PNG or binary PPM): {e}"))?;
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .to_luma8()
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode the grayscale PNG: {e}"))?;
    Ok(out.into_inner())
}

/// `GET key`, `SET key value` (the value may hold spaces and any bytes),
/// `DEL key`, against memcached.
fn kv_command(client: &memcache::Client, input: &[u8]) -> Result<Vec<u8>, String> {
    let mut parts = input.splitn(3, |b| *b == b' ');
    let verb = parts.next().unwrap_or_default();
    let key = parts
        .next()
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| !k.is_empty() && k.len() <= 250);
    let Some(key) = key else {
        return Err(
            "kv wants `GET key`, `SET key value` or `DEL key` (keys: 1 to 250 bytes of UTF-8)"
                .into(),
        );
    };
    let failed = |e: memcache::MemcacheError| format!("memcached: {e}");
    match verb {
        b"GET" => match client.get::<Vec<u8>>(key).map_err(failed)? {
            Some(value) => Ok(value),
            None => Err(format!("no value for key `{key}`")),
        },
        b"SET" => {
            client
                .set(key, parts.next().unwrap_or_default(), 0)
                .map_err(failed)?;
            Ok(b"STORED".to_vec())
        }
        b"DEL" => Ok(if client.delete(key).map_err(failed)? {
            b"DELETED".to_vec()
        } else {
            b"NOT_FOUND".to_vec()
        }),
        other => Err(format!(
            "kv: unknown command `{}` (GET, SET or DEL)",
            String::from_utf8_lossy(other)
        )),
    }
}
