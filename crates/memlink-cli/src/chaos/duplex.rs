//! Duplex channels under attack: the two sides of a pair send numbered messages to each other
//! at once; the driver kills one side, and the survivor must receive every message the victim's
//! `send` acknowledged (it writes each acknowledged count to its ledger), in order and intact,
//! and then get `Disconnected`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use memlink::{Duplex, Error};

use super::ledger::{BusyLog, Counter, Record, Stop, now_ns};
use super::wire::{self, Rng};
use super::{Common, code, enter, kind};

/// Largest duplex message: twice the default ring, so the biggest stream through in fragments
/// and a kill can land mid-message.
const MAX_MESSAGE: usize = 512 << 10;

/// `memlink __chaos duplex-peer`: one side of pair slot `pair`.
pub(crate) fn peer(
    common: &Common,
    name: &str,
    pair: usize,
    side: u64,
    pair_seed: u64,
) -> io::Result<()> {
    let (board, ledger) = enter(common)?;
    let mut rng = Rng::new(common.seed);
    // The side that opens first sets the pair's rings: 4 to 256 KiB.
    let options = Duplex::options().ring_capacity(4096 << (2 * rng.below(4)));
    let chan = loop {
        if board.stopped(Stop::Duplex) {
            return Ok(());
        }
        match options.open_timeout(name, Duration::from_millis(200)) {
            Ok(chan) => break chan,
            Err(Error::Timeout) => {}
            Err(e) => {
                ledger.write(Record::new(kind::DUPLEX_ERROR, code(&e), 0, 0, 0))?;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    let peer = chan.peer_pid();
    ledger.write(Record::new(kind::PAIRED, 0, u64::from(peer), 0, 0))?;
    board.set_paired(pair, side, std::process::id(), peer);
    let chan = Arc::new(chan);
    let ledger = Arc::new(ledger);
    let board = Arc::new(board);
    {
        let (chan, ledger, board) = (chan.clone(), ledger.clone(), board.clone());
        std::thread::spawn(move || {
            let mut message = Vec::new();
            let mut seq = 0;
            while !board.stopped(Stop::Duplex) {
                let len = wire::skewed_size(&mut rng, MAX_MESSAGE);
                wire::encode_message(pair_seed, side, seq, len, &mut message);
                match chan.send(&message) {
                    Ok(()) => {
                        seq += 1;
                        // Acknowledged: the peer must receive it, whatever happens to us now.
                        if ledger.write(Record::new(kind::SENT, 0, seq, 0, 0)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = ledger.write(Record::new(kind::DUPLEX_ERROR, code(&e), 1, seq, 0));
                        return;
                    }
                }
                if rng.percent(90) {
                    std::thread::sleep(Duration::from_micros(rng.below(800)));
                }
            }
        });
    }
    let from = 1 - side;
    let mut expected = 0;
    let mut message = Vec::new();
    let mut busy = BusyLog::default();
    loop {
        let received = chan.recv_into_timeout(&mut message, Duration::from_millis(100));
        let got = now_ns();
        match received {
            Ok(()) => match wire::check_message(pair_seed, from, expected, &message) {
                Ok(()) => {
                    expected += 1;
                    board.add(Counter::DuplexMessages, 1);
                    busy.record(got, now_ns());
                }
                Err(why) => {
                    eprintln!("chaos duplex peer: WRONG message: {why}");
                    board.add(Counter::Wrong, 1);
                    ledger.write(Record::new(
                        kind::WRONG,
                        kind::PATTERN_DUPLEX,
                        expected,
                        0,
                        0,
                    ))?;
                    return Ok(());
                }
            },
            Err(Error::Timeout) => {
                if board.stopped(Stop::Duplex) {
                    return ledger.write(Record::new(kind::RECEIVED_AT_STOP, 0, expected, 0, 0));
                }
            }
            Err(Error::Disconnected { .. }) => {
                let t1 = got;
                let killed = board.killed_at(peer);
                let woke = killed.map_or(u64::MAX, |killed| t1.saturating_sub(killed));
                let busy_us = killed.map_or(0, |killed| busy.busy_us_after(killed));
                return ledger.write(Record::new(
                    kind::DISCONNECTED,
                    busy_us,
                    expected,
                    u64::from(peer),
                    woke,
                ));
            }
            Err(e) => {
                return ledger.write(Record::new(kind::DUPLEX_ERROR, code(&e), 2, expected, 0));
            }
        }
    }
}
