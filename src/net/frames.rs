//! Frames over SCTP messages: a frame (up to [`MAX_FRAME_BYTES`]) goes as
//! pieces of at most [`PIECE_BYTES`], each led by a marker byte that says
//! whether more follow. Pure: the transport feeds messages in and sends
//! what [`pieces`] gives.

use psync_sync::message::MAX_FRAME_BYTES;

/// Bytes of frame per SCTP message: with its marker byte, messages stay at
/// the size every WebRTC stack accepts (RFC 8841's default).
pub const PIECE_BYTES: usize = 64 * 1024 - 1;
/// Marker: more pieces of this frame follow.
pub const MORE_FOLLOWS: u8 = 0;
/// Marker: this piece ends the frame.
pub const LAST_PIECE: u8 = 1;

/// A peer broke the framing; the link is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message without even its marker byte.
    #[error("peer sent an empty message")]
    EmptyMessage,
    /// The pieces add up to more than a frame may hold.
    #[error("peer sent a frame over the {MAX_FRAME_BYTES}-byte limit")]
    Oversized,
    /// A marker that is neither [`MORE_FOLLOWS`] nor [`LAST_PIECE`].
    #[error("peer sent an unknown piece marker {0}")]
    UnknownMarker(u8),
    /// We were asked to send a frame over the limit.
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
}

/// The pieces to send for `frame`, each as (marker, bytes); an empty frame
/// is one empty last piece.
pub fn pieces(frame: &[u8]) -> Result<Vec<(u8, &[u8])>, FrameError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(frame.len()));
    }
    if frame.is_empty() {
        return Ok(vec![(LAST_PIECE, frame)]);
    }
    let count = frame.len().div_ceil(PIECE_BYTES);
    Ok(frame
        .chunks(PIECE_BYTES)
        .enumerate()
        .map(|(i, piece)| (if i + 1 == count { LAST_PIECE } else { MORE_FOLLOWS }, piece))
        .collect())
}

/// Joins received pieces back into frames.
#[derive(Debug, Default)]
pub struct Reassembler {
    frame: Vec<u8>,
}

impl Reassembler {
    /// Takes one received message; a whole frame once its last piece came.
    pub fn push(&mut self, message: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let (&marker, piece) = message.split_first().ok_or(FrameError::EmptyMessage)?;
        if self.frame.len() + piece.len() > MAX_FRAME_BYTES {
            return Err(FrameError::Oversized);
        }
        match marker {
            MORE_FOLLOWS => {
                self.frame.extend_from_slice(piece);
                Ok(None)
            }
            LAST_PIECE => {
                self.frame.extend_from_slice(piece);
                Ok(Some(std::mem::take(&mut self.frame)))
            }
            other => Err(FrameError::UnknownMarker(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(frame: &[u8]) -> Vec<Vec<u8>> {
        pieces(frame).unwrap().into_iter().map(|(m, p)| [&[m][..], p].concat()).collect()
    }

    #[test]
    fn frames_of_every_size_come_back_whole() {
        let mut r = Reassembler::default();
        for len in [0, 1, PIECE_BYTES - 1, PIECE_BYTES, PIECE_BYTES + 1, 3 * PIECE_BYTES + 7, MAX_FRAME_BYTES] {
            let frame: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sent = messages(&frame);
            assert_eq!(sent.len(), len.div_ceil(PIECE_BYTES).max(1), "{len} bytes");
            assert!(sent.iter().all(|m| m.len() <= PIECE_BYTES + 1));
            let mut got = Vec::new();
            for m in &sent {
                got.extend(r.push(m).unwrap());
            }
            assert_eq!(got, vec![frame], "{len} bytes");
        }
    }

    #[test]
    fn broken_framing_is_refused() {
        assert_eq!(pieces(&vec![0; MAX_FRAME_BYTES + 1]), Err(FrameError::TooLarge(MAX_FRAME_BYTES + 1)));
        let mut r = Reassembler::default();
        assert_eq!(r.push(&[]), Err(FrameError::EmptyMessage));
        assert_eq!(r.push(&[7, 1, 2]), Err(FrameError::UnknownMarker(7)));
        let piece = vec![MORE_FOLLOWS; PIECE_BYTES + 1];
        let mut r = Reassembler::default();
        let mut outcome = Ok(None);
        for _ in 0..=MAX_FRAME_BYTES / PIECE_BYTES {
            outcome = r.push(&piece);
            if outcome.is_err() {
                break;
            }
        }
        assert_eq!(outcome, Err(FrameError::Oversized), "pieces past the frame limit");
    }
}
