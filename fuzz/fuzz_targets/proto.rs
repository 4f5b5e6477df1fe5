//! Protocol message decoding: the input is the plaintext of one message. It is decoded directly as an `AgentMsg` and
//! a `ServerMsg`, and the way the server receives it: sealed under the fixed key, framed, reframed by `FrameDecoder`
//! and opened with `open_msg::<AgentMsg>`. Both paths must agree, and a decoded message must survive re-encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_schema::envelope::{self, MAX_SEALED};
use vigil_schema::frame::{self, FrameDecoder};
use vigil_schema::proto::{self, AgentMsg, ServerMsg};

fn round_trips<M>(msg: &M)
where
    M: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_vec(msg).expect("a decoded message encodes");
    let back: M = serde_json::from_slice(&json).expect("an encoded message decodes");
    vigil_fuzz::assert_reencoded(msg, &back);
}

fuzz_target!(|data: &[u8]| {
    let direct = serde_json::from_slice::<AgentMsg>(data);
    // The server keeps only hellos and reports that pass validation; those must survive re-encoding. (An invalid
    // report need not: serde_json reads an out-of-range f32 as infinity and writes it as null; finding 2.)
    if let Ok(m) = &direct {
        match m {
            AgentMsg::Hello { .. } => round_trips(m),
            AgentMsg::Report(r) => {
                if r.validate().is_ok() {
                    round_trips(m);
                }
            }
        }
    }
    if let Ok(m) = serde_json::from_slice::<ServerMsg>(data) {
        round_trips(&m);
    }

    // The server's receive path. Sealing fails only for oversize plaintext.
    let seq = match &direct {
        Ok(m) => m.seq(),
        Err(_) => proto::CONTROL_SEQ,
    };
    let Ok(sealed) = envelope::seal_with_iv(vigil_fuzz::keys(), "agent-1", seq, &[7; 16], data) else {
        assert!(data.len() + 64 > MAX_SEALED, "sealing refused a {}-byte message", data.len());
        return;
    };
    let mut decoder = FrameDecoder::default();
    decoder.push(&frame::encode(&sealed)).expect("a sealed message fits a frame");
    let received = decoder.next_frame().expect("a well-formed frame").expect("a whole frame");
    match (proto::open_msg::<AgentMsg>(vigil_fuzz::keys(), &received), direct) {
        (Ok((opened, msg)), Ok(want)) => {
            assert_eq!(msg, want);
            assert_eq!(opened.seq, seq);
            assert_eq!(opened.plaintext, data);
        }
        (Err(proto::MsgError::Decode(_)), Err(_)) => {}
        (got, want) => panic!("open_msg gave {got:?}, direct decoding {want:?}"),
    }
});
