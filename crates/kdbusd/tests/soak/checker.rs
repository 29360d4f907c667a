//! The soak test's checker: a pure function from what every client wrote down (and
//! when the conductor killed whom) to a list of violations and the run's numbers.
//!
//! Messages are known by `(sender tag, counter)`. The rules, and what excuses a
//! message from them (every excuse is counted, none is silent):
//!
//! * **Per receiver**: a sender's counters strictly increase (this also rules out
//!   duplicates at one receiver); a native receiver's kdbus sequence numbers strictly
//!   increase.
//! * **Every receipt was sent, to this receiver**: by id to it, to a name it held at
//!   some point, or a broadcast its matches take (a native client's own broadcast
//!   never comes back to it, a D-Bus client's does, as with dbus-daemon); and
//!   not a message whose send failed in a way that means "not queued". A killed
//!   sender may have had one message in flight that it never logged (counters are
//!   sequential: only `last logged + 1`).
//! * **Every sent message arrives**: a unicast or name message at most once in the
//!   whole run; a unicast to a client that was never killed exactly once; a name
//!   message exactly once unless a killed client may have held the name at the time
//!   (it died with the message queued); a broadcast at every receiver that was never
//!   killed, was subscribed before the send began, and takes its member (a native
//!   receiver may miss as many as the bus says it dropped).
//! * **Calls**: the reply echoes the call and comes from the callee (or from a holder
//!   of the name); the callee logged the call. An error is accepted only if it
//!   explains itself: the bus's quota (the message is then not expected anywhere), or
//!   the callee (or a killed holder of the name) was killed before the call returned.
//!   A reply a callee could not send is accepted only if its caller was killed first.
//! * **Global order**: one broadcast has one sequence number at every native receiver,
//!   and any two receivers whose lives overlap saw the broadcasts they both got in the
//!   same relative order.
//! * Anything a client found odd on the spot (a stray reply, a receive error) is a
//!   violation, and so is a name request that failed other than "taken" or "not
//!   yours".
#![allow(dead_code)]

use crate::model::*;
use std::collections::HashMap;

/// One client of the run, as the checker sees it.
#[derive(Clone, Debug)]
pub struct Client {
    pub tag: Tag,
    pub kind: Kind,
    /// Its unique id (0 if it never got to be ready).
    pub id: u64,
    /// When it was ready: subscribed and addressable.
    pub ready_at: u64,
    /// When the conductor SIGKILLed it in the middle of the run (taken just before the
    /// kill). Clients stopped at the very end are not "killed": they lived through the
    /// run, and their logs are complete.
    pub killed_at: Option<u64>,
    /// Which of `MEMBERS` its matches take.
    pub takes: [bool; 2],
    pub log: ClientLog,
}

impl Client {
    pub fn label(&self) -> String {
        let k = match self.kind {
            Kind::Native => "native",
            Kind::DBus => "dbus",
        };
        let fate = if self.killed_at.is_some() {
            ", killed"
        } else {
            ""
        };
        format!("{k}#{} (id {}{fate})", self.tag, self.id)
    }

    fn ever_held(&self, k: u8) -> bool {
        self.log.names.iter().any(|o| {
            o.k == k && o.acquire && matches!(o.result, NameResult::Owner | NameResult::Queued)
        })
    }

    /// When it may have owned or waited for `NAMES[k]`: from the start of a successful
    /// acquire to the end of the release that undid it (or forever).
    fn held_intervals(&self, k: u8) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut start = None;
        for o in self.log.names.iter().filter(|o| o.k == k) {
            let ok = matches!(o.result, NameResult::Owner | NameResult::Queued);
            if o.acquire && ok && start.is_none() {
                start = Some(o.t0);
            }
            if !o.acquire {
                if let Some(s) = start.take() {
                    out.push((s, o.t1));
                }
            }
        }
        if let Some(s) = start {
            out.push((s, u64::MAX));
        }
        out
    }
}

pub struct Run {
    /// Indexed by tag.
    pub clients: Vec<Client>,
}

/// The run in numbers.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// [native, D-Bus] senders × [calls, one-way, broadcasts].
    pub sent: [[u64; 3]; 2],
    /// Receipts by id, by name, of broadcasts.
    pub got: [u64; 3],
    pub replies: u64,
    /// Replies by [caller kind][callee kind] (0 native, 1 D-Bus).
    pub replies_by_kind: [[u64; 2]; 2],
    /// Broadcast deliveries that were required and found.
    pub broadcasts_checked: u64,
    /// Refused by the bus for lack of room (the message was then not expected).
    pub refused: u64,
    /// Sends and calls that failed because their destination had been killed.
    pub to_gone: u64,
    /// Calls that failed because the callee was killed before it replied.
    pub callee_died: u64,
    /// Accepted one-way messages to clients killed later: arrived before the kill, or
    /// not.
    pub to_killed_arrived: u64,
    pub to_killed_lost: u64,
    /// Name messages lost in the queue of a killed owner.
    pub lost_with_killed_owner: u64,
    /// Receipts of a killed sender's last message, which it had no time to log.
    pub unlogged_at_kill: u64,
    /// Receipts at clients killed mid-run (not checked for completeness).
    pub at_killed_receivers: u64,
    /// Broadcasts missing at a native receiver that the bus said it dropped.
    pub dropped_allowed: u64,
    /// Replies that could not be sent because the caller had been killed.
    pub answers_to_killed: u64,
    pub name_owner: u64,
    pub name_queued: u64,
    pub name_released: u64,
    pub name_refused: u64,
    /// Pairs of receivers whose relative order of common broadcasts was compared.
    pub pairs_compared: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    /// The first violations, in words.
    pub violations: Vec<String>,
    /// All of them.
    pub n_violations: usize,
    pub counts: Counts,
}

const SHOW: usize = 60;

impl Report {
    fn violation(&mut self, s: String) {
        self.n_violations += 1;
        if self.violations.len() < SHOW {
            self.violations.push(s);
        }
    }
}

const NONE: u32 = u32::MAX;

fn key(from: Tag, n: u32) -> u64 {
    (from as u64) << 32 | n as u64
}

fn show_key(k: u64) -> String {
    format!("#{}/{}", k >> 32, k as u32)
}

/// Whether `rc` may get a broadcast from `from`: a native sender never gets its own
/// (kdbus), a D-Bus sender does when its rules take it (dbus-daemon).
fn gets_own(rc: &Client, from: Tag) -> bool {
    rc.tag != from || rc.kind == Kind::DBus
}

pub fn check(run: &Run) -> Report {
    let mut r = Report::default();
    let cl = &run.clients;
    for (i, c) in cl.iter().enumerate() {
        assert_eq!(c.tag as usize, i, "the client table is indexed by tag");
    }

    // Senders' messages by counter; outcomes with late refusals applied.
    let mut by_n: Vec<Vec<u32>> = vec![Vec::new(); cl.len()];
    let mut last_n = vec![0u32; cl.len()];
    let mut outcome: Vec<Vec<Outcome>> = Vec::with_capacity(cl.len());
    for c in cl {
        let t = c.tag as usize;
        for (i, s) in c.log.sent.iter().enumerate() {
            let n = s.n as usize;
            if by_n[t].len() <= n {
                by_n[t].resize(n + 1, NONE);
            }
            if s.n == 0 || by_n[t][n] != NONE {
                r.violation(format!("{} logged message {} twice", c.label(), s.n));
                continue;
            }
            by_n[t][n] = i as u32;
            last_n[t] = last_n[t].max(s.n);
        }
        outcome.push(c.log.sent.iter().map(|s| s.out).collect());
    }
    let sent_idx = |from: Tag, n: u32| -> Option<usize> {
        let i = *by_n.get(from as usize)?.get(n as usize)?;
        (i != NONE).then_some(i as usize)
    };
    for c in cl {
        for &(n, fail) in &c.log.refused {
            match sent_idx(c.tag, n) {
                Some(i) if matches!(c.log.sent[i].what, What::Oneway(_) | What::Call(_)) => {
                    outcome[c.tag as usize][i] = Outcome::Fail(fail)
                }
                Some(_) => r.violation(format!(
                    "{}: broadcast {n} refused after it was sent ({fail})",
                    c.label()
                )),
                None if c.killed_at.is_some() && n == last_n[c.tag as usize] + 1 => {}
                None => r.violation(format!(
                    "{}: refusal of message {n}, which it never sent",
                    c.label()
                )),
            }
        }
    }

    // ---------------------------------------------------------------- receipts
    let mut receipts: Vec<Vec<u8>> = cl.iter().map(|c| vec![0; c.log.sent.len()]).collect();
    // Per receiver: the broadcasts it got, in order, and sorted by key for lookups.
    let mut b_order: Vec<Vec<u64>> = vec![Vec::new(); cl.len()];
    let mut seq_of: HashMap<u64, (u64, Tag)> = HashMap::new();
    for rc in cl {
        let mut last: HashMap<Tag, u32> = HashMap::new();
        let mut last_seq = 0u64;
        if rc.killed_at.is_some() {
            r.counts.at_killed_receivers += rc.log.got.len() as u64;
        }
        for g in &rc.log.got {
            let k = key(g.from, g.n);
            r.counts.got[match g.via {
                Via::Id => 0,
                Via::Name(_) => 1,
                Via::Broadcast(_) => 2,
            }] += 1;
            if rc.kind == Kind::Native {
                if g.seq <= last_seq {
                    r.violation(format!(
                        "{}: sequence number {} after {} (message {})",
                        rc.label(),
                        g.seq,
                        last_seq,
                        show_key(k)
                    ));
                }
                last_seq = last_seq.max(g.seq);
            }
            if let Some(&l) = last.get(&g.from) {
                if g.n <= l {
                    let what = if g.n == l { "twice" } else { "out of order" };
                    r.violation(format!(
                        "{}: message {} from #{} {what} (after {l}): per-sender order",
                        rc.label(),
                        g.n,
                        g.from
                    ));
                }
            }
            last.insert(g.from, g.n.max(last.get(&g.from).copied().unwrap_or(0)));
            if let Via::Broadcast(_) = g.via {
                b_order[rc.tag as usize].push(k);
                if rc.kind == Kind::Native {
                    let (s, first) = *seq_of.entry(k).or_insert((g.seq, rc.tag));
                    if s != g.seq {
                        r.violation(format!(
                            "broadcast {} has sequence number {} at {} but {} at #{first}",
                            show_key(k),
                            g.seq,
                            rc.label(),
                            s
                        ));
                    }
                }
            }
            let Some(sender) = cl.get(g.from as usize) else {
                r.violation(format!("{}: message from unknown #{}", rc.label(), g.from));
                continue;
            };
            if sender.id != 0 && sender.id != g.src as u64 {
                r.violation(format!(
                    "{}: message {} claims to be from {} but the bus says id {}",
                    rc.label(),
                    show_key(k),
                    sender.label(),
                    g.src
                ));
            }
            let Some(i) = sent_idx(g.from, g.n) else {
                if sender.killed_at.is_some() && g.n == last_n[g.from as usize] + 1 {
                    r.counts.unlogged_at_kill += 1;
                } else {
                    r.violation(format!(
                        "{}: got {} ({:?}), which {} never sent",
                        rc.label(),
                        show_key(k),
                        g.via,
                        sender.label()
                    ));
                }
                continue;
            };
            let s = sender.log.sent[i];
            let fits = match s.what {
                What::Call(Dst::Id(t)) | What::Oneway(Dst::Id(t)) => {
                    g.via == Via::Id && t == rc.tag
                }
                What::Call(Dst::Name(k)) | What::Oneway(Dst::Name(k)) => {
                    g.via == Via::Name(k) && rc.ever_held(k)
                }
                What::Signal(m) => {
                    g.via == Via::Broadcast(m) && gets_own(rc, g.from) && rc.takes[m as usize]
                }
            };
            if !fits {
                r.violation(format!(
                    "{}: got {} via {:?}, but it was addressed as {:?}",
                    rc.label(),
                    show_key(k),
                    g.via,
                    s.what
                ));
            }
            if let Outcome::Fail(f) = outcome[g.from as usize][i] {
                if f.not_queued() {
                    r.violation(format!(
                        "{}: got {} although its send failed with {f}",
                        rc.label(),
                        show_key(k)
                    ));
                }
            }
            if !matches!(s.what, What::Signal(_)) {
                let c = &mut receipts[g.from as usize][i];
                *c = c.saturating_add(1);
            }
        }
    }
    let b_sorted: Vec<Vec<(u64, u32)>> = b_order
        .iter()
        .map(|o| {
            let mut v: Vec<(u64, u32)> =
                o.iter().enumerate().map(|(p, &k)| (k, p as u32)).collect();
            v.sort_unstable();
            v
        })
        .collect();
    let has_b = |rc: Tag, k: u64| {
        b_sorted[rc as usize]
            .binary_search_by_key(&k, |e| e.0)
            .is_ok()
    };

    // A killed client that may have held name `k` in [t0, t1], killed before `by`.
    let killed_holder = |k: u8, t0: u64, t1: u64, by: u64| {
        cl.iter().any(|v| {
            v.killed_at.is_some_and(|kv| kv <= by)
                && v.held_intervals(k).iter().any(|&(s, e)| s <= t1 && e >= t0)
        })
    };
    let killed_by = |t: Tag, by: u64| {
        cl.get(t as usize)
            .is_some_and(|c| c.killed_at.is_some_and(|k| k <= by))
    };

    // ---------------------------------------------------------------- sends
    let mut dropped_left: Vec<u64> = cl.iter().map(|c| c.log.dropped).collect();
    for c in cl {
        let kind = (c.kind == Kind::DBus) as usize;
        for (i, s) in c.log.sent.iter().enumerate() {
            let k = key(c.tag, s.n);
            let rec = receipts[c.tag as usize][i];
            r.counts.sent[kind][match s.what {
                What::Call(_) => 0,
                What::Oneway(_) => 1,
                What::Signal(_) => 2,
            }] += 1;
            if rec > 1 {
                r.violation(format!(
                    "{}'s message {} ({:?}) arrived {rec} times",
                    c.label(),
                    s.n,
                    s.what
                ));
            }
            match (s.what, outcome[c.tag as usize][i]) {
                (what, Outcome::Fail(f)) => {
                    let dst = match what {
                        What::Call(d) | What::Oneway(d) => Some(d),
                        What::Signal(_) => None,
                    };
                    let dead_callee = match dst {
                        Some(Dst::Id(t)) => killed_by(t, s.t1),
                        Some(Dst::Name(k)) => killed_holder(k, s.t0, s.t1, s.t1),
                        None => false,
                    };
                    let gone = matches!(dst, Some(Dst::Id(t)) if killed_by(t, s.t1));
                    let excuse = match f {
                        Fail::Limits | Fail::Errno(libc::ENOBUFS) | Fail::Errno(libc::EXFULL) => {
                            r.counts.refused += 1;
                            true
                        }
                        Fail::NoReply | Fail::Errno(libc::EPIPE)
                            if matches!(what, What::Call(_)) && dead_callee =>
                        {
                            r.counts.callee_died += 1;
                            true
                        }
                        Fail::Unknown
                        | Fail::Errno(libc::ENXIO)
                        | Fail::Errno(libc::ESRCH)
                        | Fail::Errno(libc::EADDRNOTAVAIL)
                            if gone =>
                        {
                            r.counts.to_gone += 1;
                            true
                        }
                        _ => false,
                    };
                    if !excuse {
                        r.violation(format!(
                            "{}: {:?} (message {}) failed with {f}, and nothing explains it \
                             (sent {}..{})",
                            c.label(),
                            what,
                            s.n,
                            s.t0,
                            s.t1
                        ));
                    }
                }
                (What::Call(d), Outcome::Reply { callee, echo }) => {
                    r.counts.replies += 1;
                    if let Some(x) = cl.get(callee as usize) {
                        r.counts.replies_by_kind[kind][(x.kind == Kind::DBus) as usize] += 1;
                    }
                    let right = match d {
                        Dst::Id(t) => callee == t,
                        Dst::Name(k) => cl.get(callee as usize).is_some_and(|x| x.ever_held(k)),
                    };
                    if echo != s.n || !right {
                        r.violation(format!(
                            "{}: call {} ({d:?}) answered by #{callee} for call {echo}",
                            c.label(),
                            s.n
                        ));
                    }
                    if rec != 1 {
                        r.violation(format!(
                            "{}: call {} ({d:?}) was answered but received {rec} times",
                            c.label(),
                            s.n
                        ));
                    }
                }
                (What::Oneway(Dst::Id(t)), Outcome::Ok) => {
                    if killed_by(t, u64::MAX) {
                        if rec > 0 {
                            r.counts.to_killed_arrived += 1;
                        } else {
                            r.counts.to_killed_lost += 1;
                        }
                    } else if rec == 0 {
                        r.violation(format!(
                            "{}: message {} to #{t} was accepted but never arrived",
                            c.label(),
                            s.n
                        ));
                    }
                }
                (What::Oneway(Dst::Name(nk)), Outcome::Ok) => {
                    if rec == 0 {
                        if killed_holder(nk, s.t0, s.t1, u64::MAX) {
                            r.counts.lost_with_killed_owner += 1;
                        } else {
                            r.violation(format!(
                                "{}: message {} to {} was accepted but never arrived",
                                c.label(),
                                s.n,
                                NAMES[nk as usize]
                            ));
                        }
                    }
                }
                (What::Signal(m), Outcome::Ok) => {
                    for rc in cl {
                        let required = rc.killed_at.is_none()
                            && rc.id != 0
                            && gets_own(rc, c.tag)
                            && rc.takes[m as usize]
                            && rc.ready_at < s.t0;
                        if !required {
                            continue;
                        }
                        if has_b(rc.tag, k) {
                            r.counts.broadcasts_checked += 1;
                        } else if dropped_left[rc.tag as usize] > 0 {
                            dropped_left[rc.tag as usize] -= 1;
                            r.counts.dropped_allowed += 1;
                        } else {
                            r.violation(format!(
                                "{}: missing broadcast {} ({}) from {}",
                                rc.label(),
                                show_key(k),
                                MEMBERS[m as usize],
                                c.label()
                            ));
                        }
                    }
                }
                (what, out) => r.violation(format!(
                    "{}: {what:?} (message {}) has outcome {out:?}",
                    c.label(),
                    s.n
                )),
            }
        }
    }

    // ---------------------------------------------------------------- the rest
    for c in cl {
        for a in &c.log.answered {
            let Some(f) = a.fail else { continue };
            if killed_by(a.from, a.t) {
                r.counts.answers_to_killed += 1;
            } else {
                r.violation(format!(
                    "{}: its reply to {} failed with {f}, but the caller lives",
                    c.label(),
                    show_key(key(a.from, a.n))
                ));
            }
        }
        for s in &c.log.strays {
            r.violation(format!("{}: {s}", c.label()));
        }
        for o in &c.log.names {
            match o.result {
                NameResult::Owner => r.counts.name_owner += 1,
                NameResult::Queued => r.counts.name_queued += 1,
                NameResult::Released => r.counts.name_released += 1,
                NameResult::NotDone(Fail::Errno(
                    libc::EEXIST | libc::EALREADY | libc::ESRCH | libc::EADDRINUSE,
                )) => r.counts.name_refused += 1,
                NameResult::NotDone(f) => r.violation(format!(
                    "{}: {} of {} failed with {f}",
                    c.label(),
                    if o.acquire { "acquire" } else { "release" },
                    NAMES[o.k as usize]
                )),
            }
        }
    }

    // Global order: for two receivers alive at the same time, the broadcasts both got
    // come in the same relative order. Walk the shorter list, find each in the longer.
    // Pairs are taken in order of readiness, so the scan of partners stops at the first
    // one that became ready after `a` was killed (a long run has thousands of victims).
    let life = |c: &Client| (c.ready_at, c.killed_at.unwrap_or(u64::MAX));
    let mut by_ready: Vec<&Client> = cl.iter().filter(|c| c.id != 0).collect();
    by_ready.sort_by_key(|c| (c.ready_at, c.tag));
    for (i, a) in by_ready.iter().enumerate() {
        let end_a = life(a).1;
        for b in by_ready[i + 1..].iter().take_while(|b| b.ready_at <= end_a) {
            if life(b).1 < a.ready_at {
                continue;
            }
            let (short, long) = if b_order[a.tag as usize].len() <= b_order[b.tag as usize].len() {
                (a, b)
            } else {
                (b, a)
            };
            let index = &b_sorted[long.tag as usize];
            let mut prev: Option<(u32, u64)> = None;
            r.counts.pairs_compared += 1;
            for &k in &b_order[short.tag as usize] {
                let Ok(at) = index.binary_search_by_key(&k, |e| e.0) else {
                    continue;
                };
                let pos = index[at].1;
                if let Some((p, pk)) = prev {
                    if pos <= p {
                        r.violation(format!(
                            "{} got broadcast {} before {}, {} the other way round",
                            short.label(),
                            show_key(pk),
                            show_key(k),
                            long.label()
                        ));
                    }
                }
                prev = Some((pos, k));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(tag: Tag, kind: Kind, takes: [bool; 2]) -> Client {
        Client {
            tag,
            kind,
            id: 100 + tag as u64,
            ready_at: 10,
            killed_at: None,
            takes,
            log: ClientLog::default(),
        }
    }

    fn sent(n: u32, what: What, out: Outcome) -> Sent {
        Sent {
            n,
            what,
            t0: 100 * n as u64,
            t1: 100 * n as u64 + 50,
            out,
        }
    }

    fn got(from: Tag, n: u32, via: Via, seq: u64) -> Got {
        Got {
            from,
            n,
            src: 100 + from,
            via,
            seq,
        }
    }

    /// Sender 0 (native) broadcasts Tick twice, sends one one-way to 1 and calls 2;
    /// sender 3 broadcasts Tick once in between. Receiver 1 is native and takes Tick,
    /// receiver 2 is a D-Bus client that takes both.
    fn base() -> Run {
        let mut c0 = client(0, Kind::Native, [false, false]);
        c0.log.sent = vec![
            sent(1, What::Signal(0), Outcome::Ok),
            sent(2, What::Oneway(Dst::Id(1)), Outcome::Ok),
            sent(
                3,
                What::Call(Dst::Id(2)),
                Outcome::Reply { callee: 2, echo: 3 },
            ),
            sent(4, What::Signal(0), Outcome::Ok),
        ];
        let mut c1 = client(1, Kind::Native, [true, false]);
        c1.log.got = vec![
            got(0, 1, Via::Broadcast(0), 10),
            got(0, 2, Via::Id, 11),
            got(3, 1, Via::Broadcast(0), 12),
            got(0, 4, Via::Broadcast(0), 13),
        ];
        let mut c2 = client(2, Kind::DBus, [true, true]);
        c2.log.got = vec![
            got(0, 1, Via::Broadcast(0), 0),
            got(0, 3, Via::Id, 0),
            got(3, 1, Via::Broadcast(0), 0),
            got(0, 4, Via::Broadcast(0), 0),
        ];
        c2.log.answered = vec![Answer {
            from: 0,
            n: 3,
            t: 320,
            fail: None,
        }];
        let mut c3 = client(3, Kind::Native, [false, false]);
        c3.log.sent = vec![Sent {
            n: 1,
            what: What::Signal(0),
            t0: 250,
            t1: 260,
            out: Outcome::Ok,
        }];
        Run {
            clients: vec![c0, c1, c2, c3],
        }
    }

    #[track_caller]
    fn fails_with(run: &Run, word: &str) {
        let r = check(run);
        assert!(
            r.violations.iter().any(|v| v.contains(word)),
            "expected a violation mentioning {word:?}, got {:?}",
            r.violations
        );
    }

    #[test]
    fn checker_accepts_a_clean_run_and_catches_violations() {
        let r = check(&base());
        assert_eq!(r.violations, Vec::<String>::new());
        assert_eq!(r.counts.broadcasts_checked, 6);
        assert_eq!(r.counts.replies, 1);

        // A duplicate at one receiver.
        let mut run = base();
        run.clients[1]
            .log
            .got
            .push(got(0, 4, Via::Broadcast(0), 14));
        fails_with(&run, "twice");

        // A sender's messages reordered at one receiver (sequence numbers still rise).
        let mut run = base();
        let g = &mut run.clients[1].log.got;
        g.swap(0, 3);
        g[0].seq = 10;
        g[3].seq = 13;
        fails_with(&run, "out of order");

        // Sequence numbers going backwards.
        let mut run = base();
        run.clients[1].log.got[2].seq = 5;
        fails_with(&run, "sequence number 5 after 11");

        // The same broadcast with two sequence numbers at two native receivers.
        let mut run = base();
        let mut c4 = client(4, Kind::Native, [true, false]);
        c4.log.got = vec![got(0, 1, Via::Broadcast(0), 99)];
        c4.ready_at = 150; // subscribed after broadcast 1 began: only 4 was required
        run.clients.push(c4);
        fails_with(&run, "has sequence number 99");

        // Two receivers disagree on the relative order of two senders' broadcasts
        // (each sender's own order is fine at both).
        let mut run = base();
        run.clients[2].log.got.swap(2, 3);
        fails_with(&run, "the other way round");

        // A broadcast missing at a subscriber; allowed once the bus says it dropped one.
        let mut run = base();
        run.clients[2].log.got.remove(3);
        fails_with(&run, "missing broadcast #0/4");
        let mut run = base();
        run.clients[1].log.got.remove(3);
        run.clients[1].log.dropped = 1;
        let r = check(&run);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.counts.dropped_allowed, 1);

        // A unicast lost, and one at the wrong receiver.
        let mut run = base();
        run.clients[1].log.got.remove(1);
        fails_with(&run, "never arrived");
        let mut run = base();
        run.clients[2].log.got.insert(1, got(0, 2, Via::Id, 0));
        fails_with(&run, "addressed as Oneway(Id(1))");

        // A message whose send failed arrives anyway.
        let mut run = base();
        run.clients[0].log.sent[1].out = Outcome::Fail(Fail::Errno(libc::ENOBUFS));
        fails_with(&run, "although its send failed");

        // A call without reply: a violation while the callee lives, accepted once it
        // was killed before the call returned.
        let mut run = base();
        run.clients[0].log.sent[2].out = Outcome::Fail(Fail::NoReply);
        run.clients[2].log.answered.clear();
        fails_with(&run, "nothing explains it");
        run.clients[2].killed_at = Some(310);
        let r = check(&run);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.counts.callee_died, 1);

        // A reply that echoes another call.
        let mut run = base();
        run.clients[0].log.sent[2].out = Outcome::Reply { callee: 2, echo: 2 };
        fails_with(&run, "answered by #2 for call 2");

        // Something nobody sent, and the last message of a killed sender that it had
        // no time to log (accepted, counted).
        let mut run = base();
        run.clients[1].log.got.push(got(0, 9, Via::Id, 20));
        fails_with(&run, "never sent");
        let mut run = base();
        run.clients[1].log.got.push(got(0, 5, Via::Id, 20));
        run.clients[0].killed_at = Some(1000);
        let r = check(&run);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.counts.unlogged_at_kill, 1);

        // A native sender gets its own broadcast; a D-Bus one may (and then must).
        let mut run = base();
        run.clients[0].takes = [true, false];
        run.clients[0]
            .log
            .got
            .push(got(0, 4, Via::Broadcast(0), 20));
        fails_with(&run, "addressed as Signal(0)");
        let mut run = base();
        run.clients[2].log.sent = vec![sent(1, What::Signal(1), Outcome::Ok)];
        fails_with(&run, "missing broadcast #2/1");
        run.clients[2].log.got.push(got(2, 1, Via::Broadcast(1), 0));
        let r = check(&run);
        assert!(r.violations.is_empty(), "{:?}", r.violations);

        // Whatever a client found odd on the spot.
        let mut run = base();
        run.clients[2]
            .log
            .strays
            .push("a reply nobody waited for".into());
        fails_with(&run, "a reply nobody waited for");
    }
}
