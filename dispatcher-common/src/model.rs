//! The reference model of the data plane: parse, decide and rewrite written
//! once in plain Rust over byte slices, with the data plane's maps behind
//! the [`View`] trait.
//!
//! It is the specification the XDP program is tested against (the
//! differential test feeds both thousands of generated packets and compares
//! verdicts, counters and output bytes), and the decision logic user space
//! reuses where the kernel passes a request up (the daemon's slow path).
//! It mirrors dispatcher-ebpf step by step; a change to one is a change to
//! both.

use crate::{
    checksum::Patch,
    hash,
    maps::{
        egress, family, policy, Endpoint, Function, Settings, Worker, Workflow, LL_CANDIDATES,
        MAX_RESTEERS, MAX_WORKFLOW_STEPS, RESTEER_TRIES,
    },
    net::{
        ETHERTYPE_8021AD, ETHERTYPE_8021Q, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETH_LEN, IPPROTO_UDP,
        IPV4_LEN, IPV4_MF_OR_OFFSET, IPV6_AH, IPV6_DEST_OPTS, IPV6_ESP, IPV6_FRAGMENT,
        IPV6_HOP_BY_HOP, IPV6_LEN, IPV6_ROUTING, MAX_IPV6_EXT_HEADERS, UDP_LEN, VLAN_LEN,
    },
    protocol::{flags, kind, FaasHdr, HeaderEdit, MAGIC, VERSION},
    stats::Counter,
};

/// The data plane's maps, as the model reads them.
pub trait View {
    fn is_service(&self, e: &Endpoint) -> bool;
    fn is_registered(&self, e: &Endpoint) -> bool;
    fn function(&self, id: u32) -> Option<Function>;
    fn workflow(&self, id: u32) -> Option<Workflow>;
    fn worker(&self, index: u32) -> Option<Worker>;
    /// Slot at `position` (wrapped, see `Function::ring_position`) of the
    /// function's live ring.
    fn ring_slot(&self, f: &Function, position: u32) -> Option<u8>;
    /// Slot at `position` (wrapped) of the function's live Maglev table.
    fn maglev_slot(&self, f: &Function, position: u32) -> Option<u8>;
    /// The worker's `Load::rank` (load relative to weight).
    fn load(&self, worker_index: u32) -> Option<u32>;
    fn settings(&self) -> Option<Settings>;
    /// The round-robin turn the data plane takes next for the function.
    fn turn(&self, function_index: u32) -> u32;
}

/// What the program returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Tx,
    Redirect,
    Pass,
    Drop,
}

/// A dispatch decided: where to, and what to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dispatch {
    pub function: Function,
    pub slot: u32,
    pub worker: Worker,
    pub edit: HeaderEdit,
    pub counter: Counter,
}

/// Where the headers of a parsed frame are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub family: u8,
    pub src: Endpoint,
    pub dst: Endpoint,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn mapped(a: &[u8], port: [u8; 2]) -> Endpoint {
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12..].copy_from_slice(&a[..4]);
    Endpoint {
        addr,
        port,
        _pad: [0; 2],
    }
}

/// Parses down to the UDP header, exactly as `Packet::parse` does.
pub fn parse(frame: &[u8]) -> Result<Parsed, Counter> {
    let need = |end: usize| {
        if frame.len() >= end {
            Ok(())
        } else {
            Err(Counter::PassMalformed)
        }
    };
    need(ETH_LEN)?;
    let mut offset = ETH_LEN;
    let mut ether_type = be16(frame, 12);
    for _ in 0..2 {
        if ether_type == ETHERTYPE_8021AD || ether_type == ETHERTYPE_8021Q {
            need(offset + VLAN_LEN)?;
            ether_type = be16(frame, offset + 2);
            offset += VLAN_LEN;
        }
    }
    let l3 = offset;
    let (fam, l4, ip_end) = if ether_type == ETHERTYPE_IPV4 {
        need(l3 + IPV4_LEN)?;
        let vihl = frame[l3];
        let header_len = (vihl & 0x0f) as usize * 4;
        if vihl >> 4 != 4 || header_len < IPV4_LEN {
            return Err(Counter::PassMalformed);
        }
        if frame[l3 + 9] != IPPROTO_UDP {
            return Err(Counter::PassNotUdp);
        }
        if be16(frame, l3 + 6) & IPV4_MF_OR_OFFSET != 0 {
            return Err(Counter::PassFragment);
        }
        let total_len = be16(frame, l3 + 2) as usize;
        if total_len < header_len {
            return Err(Counter::PassBadLength);
        }
        (family::IPV4, l3 + header_len, l3 + total_len)
    } else if ether_type == ETHERTYPE_IPV6 {
        need(l3 + IPV6_LEN)?;
        if frame[l3] >> 4 != 6 {
            return Err(Counter::PassMalformed);
        }
        let ip_end = l3 + IPV6_LEN + be16(frame, l3 + 4) as usize;
        (
            family::IPV6,
            skip_ipv6_extensions(frame, frame[l3 + 6], l3 + IPV6_LEN)?,
            ip_end,
        )
    } else {
        return Err(Counter::PassNotIp);
    };
    need(l4 + UDP_LEN)?;
    // The IP packet within the frame (padding may follow), the UDP datagram
    // within the IP payload (it may end before it).
    let udp_len = be16(frame, l4 + 4) as usize;
    if ip_end > frame.len() || udp_len < UDP_LEN || l4 + udp_len > ip_end {
        return Err(Counter::PassBadLength);
    }
    let src_port = [frame[l4], frame[l4 + 1]];
    let dst_port = [frame[l4 + 2], frame[l4 + 3]];
    let (src, dst) = if fam == family::IPV4 {
        (
            mapped(&frame[l3 + 12..], src_port),
            mapped(&frame[l3 + 16..], dst_port),
        )
    } else {
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s.copy_from_slice(&frame[l3 + 8..l3 + 24]);
        d.copy_from_slice(&frame[l3 + 24..l3 + 40]);
        (
            Endpoint {
                addr: s,
                port: src_port,
                _pad: [0; 2],
            },
            Endpoint {
                addr: d,
                port: dst_port,
                _pad: [0; 2],
            },
        )
    };
    Ok(Parsed {
        l3_offset: l3,
        l4_offset: l4,
        family: fam,
        src,
        dst,
    })
}

fn skip_ipv6_extensions(frame: &[u8], mut next: u8, mut offset: usize) -> Result<usize, Counter> {
    for i in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_UDP => return Ok(offset),
            IPV6_FRAGMENT => return Err(Counter::PassFragment),
            // Hop-by-hop options only right after the IPv6 header.
            IPV6_HOP_BY_HOP if i > 0 => return Err(Counter::PassIpv6ExtHeader),
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {}
            IPV6_ESP | IPV6_AH => return Err(Counter::PassIpv6ExtHeader),
            _ => return Err(Counter::PassNotUdp),
        }
        if frame.len() < offset + 4 {
            return Err(Counter::PassMalformed);
        }
        if next == IPV6_ROUTING && frame[offset + 3] != 0 {
            return Err(Counter::PassIpv6ExtHeader);
        }
        let len = (frame[offset + 1] as usize + 1) * 8;
        next = frame[offset];
        offset += len;
    }
    match next {
        IPPROTO_UDP => Ok(offset),
        IPV6_FRAGMENT => Err(Counter::PassFragment),
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_ESP | IPV6_AH => {
            Err(Counter::PassIpv6ExtHeader)
        }
        _ => Err(Counter::PassNotUdp),
    }
}

/// Decides what to run for a FaaS header that arrived from `src`, and picks
/// the worker: everything short of writing. `random` stands for the
/// kernel's bpf_get_prandom_u32 (p2c).
pub fn decide(
    hdr: &FaasHdr,
    src: &Endpoint,
    packet_family: u8,
    view: &impl View,
    random: u32,
) -> Result<Dispatch, Counter> {
    let (function, edit, counter) = match hdr.kind {
        kind::REQUEST => request(hdr, view)?,
        kind::STEP => {
            registered(src, view)?;
            step(hdr, view)?
        }
        kind::BUSY => {
            registered(src, view)?;
            busy(hdr, view)?
        }
        _ => return Err(Counter::PassNotRequest),
    };
    let slot = match edit {
        HeaderEdit::Resteer { .. } => other_than(&function, src, view)?,
        _ => by_policy(&function, hdr.key(), src, view, random)?,
    };
    let worker = view
        .worker(function.worker_index(slot))
        .ok_or(Counter::PassNoWorker)?;
    if worker.family != packet_family {
        return Err(Counter::PassFamilyMismatch);
    }
    Ok(Dispatch {
        function,
        slot,
        worker,
        edit,
        counter,
    })
}

fn registered(src: &Endpoint, view: &impl View) -> Result<(), Counter> {
    if view.is_registered(src) {
        Ok(())
    } else {
        Err(Counter::DropNotRegistered)
    }
}

fn request(hdr: &FaasHdr, view: &impl View) -> Result<(Function, HeaderEdit, Counter), Counter> {
    let id = hdr.function_id();
    if let Some(f) = view.function(id) {
        return Ok((f, HeaderEdit::None, Counter::DispatchedRequest));
    }
    let w = view.workflow(id).ok_or(Counter::PassUnknownFunction)?;
    if w.step_count == 0 || w.step_count as usize > MAX_WORKFLOW_STEPS {
        return Err(Counter::PassBadStep);
    }
    let function_id = w.functions[0];
    let f = view
        .function(function_id)
        .ok_or(Counter::PassUnknownFunction)?;
    Ok((
        f,
        HeaderEdit::StartWorkflow {
            workflow_id: id,
            function_id,
            last: w.step_count == 1,
        },
        Counter::DispatchedWorkflow,
    ))
}

fn step(hdr: &FaasHdr, view: &impl View) -> Result<(Function, HeaderEdit, Counter), Counter> {
    let w = view
        .workflow(hdr.workflow_id())
        .ok_or(Counter::PassBadStep)?;
    let step = hdr.step as usize;
    if step >= MAX_WORKFLOW_STEPS || step as u32 >= w.step_count {
        return Err(Counter::PassBadStep);
    }
    let function_id = w.functions[step];
    let f = view
        .function(function_id)
        .ok_or(Counter::PassUnknownFunction)?;
    Ok((
        f,
        HeaderEdit::Step {
            function_id,
            last: step as u32 + 1 == w.step_count,
        },
        Counter::DispatchedStep,
    ))
}

fn busy(hdr: &FaasHdr, view: &impl View) -> Result<(Function, HeaderEdit, Counter), Counter> {
    let resteers = hdr.resteers();
    if resteers >= MAX_RESTEERS {
        return Err(Counter::PassBusyExhausted);
    }
    let kind = hdr.busy_answered_kind();
    let f = view
        .function(hdr.function_id())
        .ok_or(Counter::PassUnknownFunction)?;
    Ok((
        f,
        HeaderEdit::Resteer {
            kind,
            resteers: resteers + 1,
        },
        Counter::Resteered,
    ))
}

/// The affinity hash: the key, or the client's address and port.
pub fn affinity_hash(key: u64, src: &Endpoint) -> u32 {
    if key != 0 {
        hash::key_hash(key)
    } else {
        hash::client_hash(hash::fold_address(&src.addr), u16::from_be_bytes(src.port))
    }
}

fn by_policy(
    f: &Function,
    key: u64,
    src: &Endpoint,
    view: &impl View,
    random: u32,
) -> Result<u32, Counter> {
    if f.up_count == 0 {
        return Err(Counter::PassNoWorker);
    }
    let ring = |p: u32| view.ring_slot(f, p).map(u32::from);
    let load = |slot: u32| view.load(f.worker_index(slot)).unwrap_or(u32::MAX);
    let slot = match f.policy {
        policy::HASH => view.maglev_slot(f, affinity_hash(key, src)).map(u32::from),
        policy::P2C => match (ring(random), ring(random >> 8)) {
            (Some(a), Some(b)) => Some(if load(b) < load(a) { b } else { a }),
            _ => None,
        },
        policy::LEAST_LOADED => {
            if f.ll_count == 0 {
                None
            } else {
                let mut best = f.ll_slots[0] as u32;
                for i in 1..LL_CANDIDATES.min(f.ll_count as usize) {
                    let s = f.ll_slots[i] as u32;
                    if load(s) < load(best) {
                        best = s;
                    }
                }
                Some(best)
            }
        }
        _ => ring(view.turn(f.index)),
    };
    slot.ok_or(Counter::PassNoWorker)
}

fn other_than(f: &Function, busy: &Endpoint, view: &impl View) -> Result<u32, Counter> {
    if f.up_count == 0 {
        return Err(Counter::PassBusyExhausted);
    }
    let is_other = |slot: u32| {
        view.worker(f.worker_index(slot))
            .is_some_and(|w| !(w.port == busy.port && worker_address(&w) == busy.addr))
    };
    let turn = view.turn(f.index);
    for i in 0..RESTEER_TRIES {
        let slot = view
            .ring_slot(f, turn.wrapping_add(i))
            .ok_or(Counter::PassBusyExhausted)? as u32;
        if is_other(slot) {
            return Ok(slot);
        }
    }
    // Then the least-loaded candidates (distinct workers).
    f.ll_slots[..(f.ll_count as usize).min(LL_CANDIDATES)]
        .iter()
        .map(|&s| s as u32)
        .find(|&s| is_other(s))
        .ok_or(Counter::PassBusyExhausted)
}

/// A worker's address as an endpoint holds it (IPv4-mapped for IPv4).
pub fn worker_address(w: &Worker) -> [u8; 16] {
    if w.family == family::IPV4 {
        mapped(&w.addr, [0; 2]).addr
    } else {
        w.addr
    }
}

/// Applies `edit` to a header (for user space, which forwards headers it
/// holds as values; the frame-level rewrite also patches checksums).
pub fn edit_header(hdr: &mut FaasHdr, edit: &HeaderEdit, src: &Endpoint) {
    match *edit {
        HeaderEdit::None => {}
        HeaderEdit::StartWorkflow {
            workflow_id,
            function_id,
            last,
        } => {
            hdr.function_id = function_id.to_be_bytes();
            hdr.workflow_id = workflow_id.to_be_bytes();
            hdr.step = 0;
            hdr.flags = flags::REPLY_SET | if last { flags::LAST_STEP } else { 0 };
            hdr.reply_port = src.port;
            hdr.reply_addr = src.addr;
        }
        HeaderEdit::Step { function_id, last } => {
            hdr.function_id = function_id.to_be_bytes();
            hdr.flags = (hdr.flags & !flags::LAST_STEP) | if last { flags::LAST_STEP } else { 0 };
        }
        HeaderEdit::Resteer { kind, resteers } => {
            hdr.kind = kind;
            hdr.flags = (hdr.flags & !flags::RESTEER_MASK) | (resteers << flags::RESTEER_SHIFT);
        }
    }
}

/// What the program does with a frame: its verdict and counter, and the
/// dispatch (if any). `frame` is rewritten in place when dispatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub counter: Counter,
    pub dispatch: Option<Dispatch>,
}

/// Runs the whole program over `frame`.
pub fn process(frame: &mut [u8], view: &impl View, random: u32) -> Outcome {
    match try_process(frame, view, random) {
        Ok((verdict, d)) => Outcome {
            verdict,
            counter: d.counter,
            dispatch: Some(d),
        },
        Err(c) => Outcome {
            verdict: if c.is_drop() {
                Verdict::Drop
            } else {
                Verdict::Pass
            },
            counter: c,
            dispatch: None,
        },
    }
}

fn try_process(
    frame: &mut [u8],
    view: &impl View,
    random: u32,
) -> Result<(Verdict, Dispatch), Counter> {
    let p = parse(frame)?;
    let settings = view.settings().ok_or(Counter::PassNotConfigured)?;
    if frame[..6] != settings.iface_mac {
        return Err(Counter::PassNotForUs);
    }
    if !view.is_service(&p.dst) {
        return Err(Counter::PassNotService);
    }
    let udp_len = be16(frame, p.l4_offset + 4) as usize;
    let faas = p.l4_offset + UDP_LEN;
    if udp_len < UDP_LEN + FaasHdr::LEN || frame.len() < faas + FaasHdr::LEN {
        return Err(Counter::PassShort);
    }
    let hdr = FaasHdr::from_bytes(&frame[faas..]).ok_or(Counter::PassShort)?;
    if hdr.magic() != MAGIC {
        return Err(Counter::PassBadMagic);
    }
    if hdr.version != VERSION {
        return Err(Counter::PassBadVersion);
    }
    let d = decide(&hdr, &p.src, p.family, view, random)?;
    rewrite(frame, &p, &hdr, &d, &settings);
    let verdict = if settings.egress == egress::REDIRECT {
        Verdict::Redirect
    } else {
        Verdict::Tx
    };
    Ok((verdict, d))
}

/// Writes the dispatch into the frame: header edits, addresses, checksums.
fn rewrite(frame: &mut [u8], p: &Parsed, hdr: &FaasHdr, d: &Dispatch, settings: &Settings) {
    let l4 = p.l4_offset;
    let faas = l4 + UDP_LEN;
    let udp_check = be16(frame, l4 + 6);
    let mut new_hdr = *hdr;
    edit_header(&mut new_hdr, &d.edit, &p.src);
    let old_bytes = hdr.to_bytes();
    let new_bytes = new_hdr.to_bytes();
    let mut patch = Patch::new(udp_check).bytes(&old_bytes, &new_bytes);
    frame[faas..faas + FaasHdr::LEN].copy_from_slice(&new_bytes);
    let old_port = [frame[l4 + 2], frame[l4 + 3]];
    patch = patch.bytes(&old_port, &d.worker.port);
    frame[l4 + 2..l4 + 4].copy_from_slice(&d.worker.port);
    // A STEP or re-steered BUSY came from a worker and may go back to it:
    // it leaves from the service address and port (see `leaves_from_service`).
    let from_service = d.edit.leaves_from_service();
    if from_service {
        let old_port = [frame[l4], frame[l4 + 1]];
        patch = patch.bytes(&old_port, &p.dst.port);
        frame[l4..l4 + 2].copy_from_slice(&p.dst.port);
    }
    let l3 = p.l3_offset;
    // (offset in the IP header, new bytes): the destination, and for a
    // packet that leaves from the service, the source.
    if p.family == family::IPV4 {
        let mut ip_patch = Patch::new(be16(frame, l3 + 10));
        let destination = [
            d.worker.addr[0],
            d.worker.addr[1],
            d.worker.addr[2],
            d.worker.addr[3],
        ];
        let source = [
            p.dst.addr[12],
            p.dst.addr[13],
            p.dst.addr[14],
            p.dst.addr[15],
        ];
        for (at, new) in [(16, destination), (12, source)]
            .into_iter()
            .take(if from_service { 2 } else { 1 })
        {
            let mut old = [0u8; 4];
            old.copy_from_slice(&frame[l3 + at..l3 + at + 4]);
            patch = patch.bytes(&old, &new);
            ip_patch = ip_patch.bytes(&old, &new);
            frame[l3 + at..l3 + at + 4].copy_from_slice(&new);
        }
        frame[l3 + 10..l3 + 12].copy_from_slice(&ip_patch.finish().to_be_bytes());
    } else {
        for (at, new) in [(24, d.worker.addr), (8, p.dst.addr)]
            .into_iter()
            .take(if from_service { 2 } else { 1 })
        {
            let mut old = [0u8; 16];
            old.copy_from_slice(&frame[l3 + at..l3 + at + 16]);
            patch = patch.bytes(&old, &new);
            frame[l3 + at..l3 + at + 16].copy_from_slice(&new);
        }
    }
    if udp_check != 0 {
        frame[l4 + 6..l4 + 8].copy_from_slice(&patch.finish_udp().to_be_bytes());
    }
    frame[0..6].copy_from_slice(&d.worker.mac);
    frame[6..12].copy_from_slice(&settings.src_mac);
}
