//! DNS over TCP and its 2-byte length prefix (RFC 1035 §4.2.2, RFC 7766): one frame written with
//! one write, one frame read in full or not at all.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest message a 2-byte length can frame.
pub(crate) const MAX_FRAME: usize = u16::MAX as usize;

/// Writes `msg` with its length prefix in one write (two would leave as two segments with
/// `TCP_NODELAY`). `scratch` is reused between frames. A message longer than [`MAX_FRAME`]
/// cannot be framed: `InvalidInput`, nothing written.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &[u8],
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    let Ok(len) = u16::try_from(msg.len()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message longer than 65535 bytes",
        ));
    };
    scratch.clear();
    scratch.extend_from_slice(&len.to_be_bytes());
    scratch.extend_from_slice(msg);
    w.write_all(scratch).await
}

/// Reads one length-prefixed message into `buf` (resized to it). A length above `max` is
/// `InvalidData` (the body is not read); EOF anywhere is `UnexpectedEof`.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<()> {
    let len = usize::from(r.read_u16().await?);
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame longer than allowed",
        ));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let mut scratch = Vec::new();
        write_frame(&mut a, b"hello", &mut scratch).await.unwrap();
        write_frame(&mut a, b"", &mut scratch).await.unwrap();
        write_frame(&mut a, &[7; 40], &mut scratch).await.unwrap();
        let too_long = vec![0; MAX_FRAME + 1];
        let e = write_frame(&mut a, &too_long, &mut scratch)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let mut buf = vec![1, 2, 3];
        read_frame(&mut b, &mut buf, MAX_FRAME).await.unwrap();
        assert_eq!(buf, b"hello");
        read_frame(&mut b, &mut buf, MAX_FRAME).await.unwrap();
        assert!(buf.is_empty());
        let e = read_frame(&mut b, &mut buf, 39).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);

        // A frame cut short by EOF.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 10, 1, 2]).await.unwrap();
        drop(a);
        let e = read_frame(&mut b, &mut buf, MAX_FRAME).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
