//! The control logic: turning configuration into map contents, in an order
//! that keeps every packet's view consistent.
//!
//! A function's worker set changes in one step. Its selection tables are
//! double-buffered: new workers are written to free slots, the new ring and
//! Maglev table go into the idle generation, and only then is the
//! FUNCTIONS entry replaced (one update, atomic for readers) to point at
//! them. Slots that left the set are cleared after the flip. A packet thus
//! sees the old set or the new one, never a mix.

pub mod inspect;
pub mod maglev_pool;
pub mod stats;
pub mod tables;
pub mod trace;

use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context as _, Result};
use dispatcher_common::maps::{
    egress, maglev_extent_chunks, policy, worker_state, Endpoint, Function, FunctionSlot, Geometry,
    Load, ServiceSlot, TableChunk, Worker, Workflow, LL_CANDIDATES, MAX_WORKERS_PER_FUNCTION,
    MAX_WORKFLOW_STEPS, TABLE_CHUNK,
};

use crate::{
    config::{self, Config},
    control::{maglev_pool::MaglevPool, tables::Member},
    data_plane::{self, interface_mac, map_batch, Maps},
    endpoints::endpoint,
};

/// Writes the per-interface settings: source MAC and egress (XDP_TX out of
/// the attached interface, or XDP_REDIRECT to `egress.redirect_to`).
pub fn configure_interface(
    maps: &mut Maps,
    iface_mac: [u8; 6],
    egress_config: &config::Egress,
) -> Result<()> {
    match &egress_config.redirect_to {
        None => maps.set_settings(iface_mac, iface_mac, egress::TX),
        Some(target) => {
            let mac = interface_mac(target).context("egress.redirect_to")?;
            let ifindex = data_plane::ifindex(target).context("egress.redirect_to")?;
            maps.egress.set(0, ifindex, None, 0).with_context(|| {
                format!("egress.redirect_to: cannot use {target} as a redirect target")
            })?;
            maps.set_settings(iface_mac, mac, egress::REDIRECT)
        }
    }
}

/// Writes a whole config: services, functions with their workers, workflows.
pub fn apply(maps: &mut Maps, config: &Config) -> Result<()> {
    let g = maps.geometry()?;
    fits(&g, config)?;
    // New functions take free rows from one scan of FUNCTIONS, not one
    // scan each (65,536 functions: minutes instead of a second).
    *maps.rows_in_use.borrow_mut() = Some(RowsInUse::scan(maps, &g)?);
    let applied = apply_in_bulk(maps, config);
    *maps.rows_in_use.borrow_mut() = None;
    applied
}

fn apply_in_bulk(maps: &mut Maps, config: &Config) -> Result<()> {
    for addr in &config.service.addresses {
        add_service(maps, endpoint(*addr, config.service.port))
            .with_context(|| format!("cannot add service {addr} port {}", config.service.port))?;
    }
    for f in &config.functions {
        let workers: Vec<Worker> = f
            .workers
            .iter()
            .map(|w| w.to_map(f.id))
            .collect::<Result<_>>()?;
        set_function(maps, f.id, f.policy.to_map(), &workers)?;
    }
    for w in &config.workflows {
        set_workflow(maps, w.id, &w.steps)?;
    }
    Ok(())
}

/// Adds a service address and port to SERVICES, in the first free of its
/// two slots (see `Geometry::service_slots`).
pub fn add_service(maps: &mut Maps, e: Endpoint) -> Result<()> {
    let (a, b) = maps.geometry()?.service_slots(&e);
    for i in [a, b] {
        let slot = maps.services.get(&i, 0)?;
        if slot.in_use != 0 && slot.endpoint == e {
            return Ok(());
        }
    }
    for i in [a, b] {
        if maps.services.get(&i, 0)?.in_use == 0 {
            maps.services.set(
                i,
                ServiceSlot {
                    endpoint: e,
                    in_use: 1,
                },
                0,
            )?;
            return Ok(());
        }
    }
    bail!("both table slots of this service address are taken by others: use another address (rare with the host's table; on a NIC's small table, try a few)")
}

/// Whether `config` fits the data plane's geometry: the config's own
/// limits are the host's; a NIC's tables can be far smaller.
pub fn fits(g: &Geometry, config: &Config) -> Result<()> {
    let sized = |what: &str, have: usize, most: u32| {
        if have > most as usize {
            bail!(
                "{what}: the config has {have}, the data plane's maps hold {most} (sized at load: \
                 `dispatcher run --max-functions`, `--max-workers-per-function`, `--max-workflows`, or --hw-map-entries on a NIC): \
                 remove some, or load with larger maps"
            )
        }
        Ok(())
    };
    sized("functions", config.functions.len(), g.functions)?;
    for f in &config.functions {
        sized(
            &format!("functions.workers of function {}", f.id),
            f.workers.len(),
            g.workers_per_function,
        )?;
    }
    sized("workflows", config.workflows.len(), g.workflows)?;
    let maglev_chunks: u64 = config
        .functions
        .iter()
        .filter(|f| f.policy.to_map() == policy::HASH)
        .map(|f| maglev_extent_chunks(g.maglev_size_for(f.workers.len() as u32)) as u64)
        .sum();
    if maglev_chunks > g.maglev_pool_chunks as u64 {
        bail!(
            "functions with the hash policy: their Maglev tables (two generations each, sized \
             by their workers) take {} slots, the data plane's pool holds {}: give some \
             another policy, or load with a larger pool (`dispatcher run --maglev-pool`)",
            maglev_chunks * TABLE_CHUNK as u64,
            g.maglev_pool_chunks as u64 * TABLE_CHUNK as u64
        );
    }
    sized(
        "service.addresses",
        config.service.addresses.len(),
        g.service_slots,
    )
}

/// A worker's identity: its address and port.
fn worker_endpoint(w: &Worker) -> Endpoint {
    crate::endpoints::of_socket(crate::endpoints::worker_socket_addr(w))
}

/// The occupied slots of a function: slot -> worker (one batched read of
/// the slots below `slot_end`).
pub fn function_workers(maps: &Maps, f: &Function) -> Result<Vec<(u8, Worker)>> {
    let end = (f.slot_end as u32).min(MAX_WORKERS_PER_FUNCTION);
    if end == 0 {
        return Ok(Vec::new());
    }
    let all = maps.read_workers(f.worker_index(0), end)?;
    Ok(all
        .into_iter()
        .enumerate()
        .filter(|(_, w)| w.family != 0)
        .map(|(slot, w)| (slot as u8, w))
        .collect())
}

/// The smallest function index no function uses.
/// A new function's round-robin turns, one per possible CPU, evenly spaced
/// around a ring of `ring_size`: CPU k starts k/n of the way round, so the
/// CPUs' first requests go to different workers (RR_TURNS).
fn spaced_turns(ring_size: u32) -> Result<aya::maps::PerCpuValues<u32>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("cannot count the CPUs: {e}"))?;
    let turns: Vec<u32> = (0..cpus as u32)
        .map(|k| (k as u64 * ring_size as u64 / cpus as u64) as u32)
        .collect();
    Ok(aya::maps::PerCpuValues::try_from(turns)?)
}

/// Slots of a table (function rows, Maglev tables) and which are taken.
struct Taken {
    used: Vec<bool>,
    /// No slot below this is free.
    lowest_free: usize,
}

impl Taken {
    fn new(slots: u32) -> Taken {
        Taken {
            used: vec![false; slots as usize],
            lowest_free: 0,
        }
    }

    fn mark(&mut self, slot: u32) {
        if let Some(u) = self.used.get_mut(slot as usize) {
            *u = true;
        }
    }

    /// The lowest free slot, now taken.
    fn take(&mut self) -> Option<u32> {
        let i = self.lowest_free + self.used[self.lowest_free..].iter().position(|u| !u)?;
        self.used[i] = true;
        self.lowest_free = i + 1;
        Some(i as u32)
    }
}

/// Which function rows (dense indices) and which extents of the Maglev
/// pool FUNCTIONS uses: found by one scan of it. The maps are the only
/// record (the CLI, the daemon and a restarted daemon share them).
pub struct RowsInUse {
    rows: Taken,
    tables: MaglevPool,
}

impl RowsInUse {
    fn scan(maps: &Maps, g: &Geometry) -> Result<RowsInUse> {
        let mut rows = Taken::new(g.functions);
        let mut extents = Vec::new();
        for entry in maps.functions.iter() {
            let (_, f) = entry?;
            rows.mark(f.index);
            if f.policy == policy::HASH {
                extents.push(f.maglev_extent());
            }
        }
        let tables = MaglevPool::new(g.maglev_pool_chunks, extents);
        Ok(RowsInUse { rows, tables })
    }
}

/// Takes a free slot with `take`: from the bulk change's scan when one
/// runs (see `apply`), else from a scan of FUNCTIONS.
fn take_free(
    maps: &Maps,
    g: &Geometry,
    take: impl Fn(&mut RowsInUse) -> Option<u32>,
) -> Result<Option<u32>> {
    let mut bulk = maps.rows_in_use.borrow_mut();
    Ok(match bulk.as_mut() {
        Some(in_use) => take(in_use),
        None => take(&mut RowsInUse::scan(maps, g)?),
    })
}

/// A free extent of the Maglev pool, `chunks` long (its first chunk), if
/// the pool has one.
fn free_table(maps: &Maps, g: &Geometry, chunks: u32) -> Result<Option<u32>> {
    take_free(maps, g, |u| u.tables.take(chunks))
}

/// Returns a function's extent to the bulk change's pool when one runs
/// (else the next scan finds it free: no FUNCTIONS entry names it).
fn release_table(maps: &Maps, (start, chunks): (u32, u32)) {
    if let Some(in_use) = maps.rows_in_use.borrow_mut().as_mut() {
        in_use.tables.give_back(start, chunks);
    }
}

fn pool_full(g: &Geometry, id: u32, chunks: u32) -> anyhow::Error {
    let size = chunks / 2 * TABLE_CHUNK;
    anyhow!(
        "function {id}: the Maglev pool ({} slots) has no room for its {size}-slot table \
         (two generations): give another function with the hash policy a different policy \
         or fewer workers, or load the data plane with a larger pool \
         (`dispatcher run --maglev-pool`)",
        g.maglev_pool_chunks as u64 * TABLE_CHUNK as u64
    )
}

/// A free function row: from the bulk change's scan when one runs (see
/// `apply`), else from a scan of FUNCTIONS.
fn free_index(maps: &Maps, g: &Geometry) -> Result<u32> {
    take_free(maps, g, |u| u.rows.take())?.ok_or_else(|| {
        anyhow!(
            "all {} function rows of the data plane are in use: remove a function first \
             (or load it with more: `dispatcher run --max-functions`)",
            g.functions
        )
    })
}

fn add_registration(maps: &mut Maps, e: Endpoint) -> Result<()> {
    let count = maps.registered.get(&e, 0).unwrap_or(0);
    maps.registered.insert(e, count + 1, 0)?;
    Ok(())
}

fn drop_registration(maps: &mut Maps, e: Endpoint) -> Result<()> {
    match maps.registered.get(&e, 0) {
        Ok(n) if n > 1 => maps.registered.insert(e, n - 1, 0)?,
        Ok(_) => maps.registered.remove(&e)?,
        Err(_) => {}
    }
    Ok(())
}

/// Sets function `id` to `policy` with exactly `workers` (state UP ones
/// get requests), creating it if needed. See the module comment for the
/// order of writes.
pub fn set_function(maps: &mut Maps, id: u32, policy: u8, workers: &[Worker]) -> Result<()> {
    let current = match maps.functions.get(&id, 0) {
        Ok(f) => Some((f, function_workers(maps, &f)?)),
        Err(_) => None,
    };
    write_function(maps, id, policy, current, workers)
}

/// `set_function`, given what the maps hold now for `id` (its entry and
/// occupied slots; `None`: a new function). Only entries that change are
/// written, each map's in one batched call: about ten system calls per
/// change, whatever the number of workers.
fn write_function(
    maps: &mut Maps,
    id: u32,
    policy: u8,
    current: Option<(Function, Vec<(u8, Worker)>)>,
    workers: &[Worker],
) -> Result<()> {
    let g = maps.geometry()?;
    let most = g.workers_per_function;
    if workers.len() > most as usize {
        bail!(
            "function {id}: {} workers, the data plane holds at most {most} per function",
            workers.len()
        );
    }
    // A function with the hash policy holds an extent of the Maglev pool
    // sized by its workers: it keeps the one it has while the size stays,
    // else takes a new one (the old goes back after the flip). Should the
    // pool have no room for a larger table, it keeps the smaller: its
    // shares grow less even, but a worker is never refused for it.
    let held = match &current {
        Some((f, _)) if f.policy == policy::HASH => Some(f.maglev_extent()),
        _ => None,
    };
    // (Extents: first chunk, chunks.)
    let table: Option<(u32, u32)> = if policy != policy::HASH {
        None
    } else {
        let size = g.maglev_size_for(workers.len() as u32);
        let wanted = maglev_extent_chunks(size);
        match held {
            Some(extent) if extent.1 == wanted => Some(extent),
            _ => match (free_table(maps, &g, wanted)?, held) {
                (Some(start), _) => Some((start, wanted)),
                (None, Some(extent)) => {
                    tracing::warn!(
                        "function {id}: the Maglev pool has no room for a {size}-slot table; \
                         it keeps its {}-slot one (load the data plane with a larger \
                         `--maglev-pool`)",
                        extent.1 / 2 * TABLE_CHUNK
                    );
                    Some(extent)
                }
                (None, None) => return Err(pool_full(&g, id, wanted)),
            },
        }
    };
    let previous_row = current.as_ref().map(|(f, _)| f.row);
    let (index, generation, current) = match current {
        Some((f, slots)) => (f.index, 1 - f.generation, slots),
        None => {
            let index = free_index(maps, &g)?;
            maps.rr_cursors.set(index, 0, 0)?;
            maps.rr_turns.set(index, spaced_turns(g.ring_size)?, 0)?;
            (index, 0, Vec::new())
        }
    };

    // 1. Slots: a worker keeps its slot; a new one takes the lowest free
    // one, preferring slots no worker held just now (so a packet still on
    // its way to the old table never meets a stranger in its slot).
    // (Indexed by slot, and the current endpoints sorted once: a change of
    // a 64-worker function compared endpoints 4,096 times before.)
    let mut previous_by_slot: Vec<Option<Worker>> = vec![None; most as usize];
    let mut slot_by_endpoint: Vec<(Endpoint, u8)> = Vec::with_capacity(current.len());
    for (slot, w) in &current {
        previous_by_slot[*slot as usize] = Some(*w);
        slot_by_endpoint.push((worker_endpoint(w), *slot));
    }
    slot_by_endpoint.sort_unstable();
    let slot_of = |e: &Endpoint| {
        slot_by_endpoint
            .binary_search_by(|(x, _)| x.cmp(e))
            .ok()
            .map(|i| slot_by_endpoint[i].1)
    };
    let mut taken = vec![false; most as usize];
    let mut placed: Vec<(u8, Worker, Endpoint)> = Vec::with_capacity(workers.len());
    let mut fresh = Vec::new();
    // (A change mostly lists the workers in the order the maps hold them,
    // one added or removed: try the next current worker before searching.)
    let mut next = 0;
    for w in workers {
        let e = worker_endpoint(w);
        let known = match current.get(next) {
            Some((slot, c)) if worker_endpoint(c) == e => Some(*slot),
            _ => slot_of(&e),
        };
        if let Some(slot) = known {
            next = current.partition_point(|(s, _)| *s <= slot);
        }
        match known {
            Some(slot) if !taken[slot as usize] => {
                taken[slot as usize] = true;
                placed.push((slot, *w, e));
            }
            _ => fresh.push((*w, e)),
        }
    }
    for (w, e) in fresh {
        let slot = (0..most)
            .map(|s| s as u8)
            .find(|s| !taken[*s as usize] && previous_by_slot[*s as usize].is_none())
            .or_else(|| (0..most).map(|s| s as u8).find(|s| !taken[*s as usize]))
            .expect("at most workers_per_function workers");
        taken[slot as usize] = true;
        placed.push((slot, w, e));
    }

    // 2. Worker entries that changed; load counters and registrations for
    // slots that changed hands (or are new). A fresh slot starts with no
    // load; a worker whose weight changed keeps its load at its new cost
    // per request.
    let (mut changed_keys, mut changed) = (Vec::new(), Vec::new());
    let (mut load_keys, mut loads) = (Vec::new(), Vec::new());
    for (slot, w, e) in &placed {
        let i = g.worker_base(index) + *slot as u32;
        let previous = previous_by_slot[*slot as usize];
        if previous.map(|p| worker_endpoint(&p)) != Some(*e) {
            add_registration(maps, *e)?;
            if let Some(old) = previous {
                drop_registration(maps, worker_endpoint(&old))?;
            }
            load_keys.push(i);
            loads.push(Load::new(0, w.weight));
        } else if previous.is_some_and(|p| p.weight != w.weight) {
            let in_flight = maps.loads.get(&i, 0).map_or(0, |l| l.in_flight);
            load_keys.push(i);
            loads.push(Load::new(in_flight, w.weight));
        }
        if previous != Some(*w) {
            changed_keys.push(i);
            changed.push(*w);
        }
    }
    map_batch::write(&mut maps.loads, &load_keys, &loads)?;
    map_batch::write(&mut maps.workers, &changed_keys, &changed)?;
    let placed: Vec<(u8, Worker)> = placed.into_iter().map(|(s, w, _)| (s, w)).collect();

    // 3. Tables of the idle generation.
    let mut up: Vec<&(u8, Worker)> = placed
        .iter()
        .filter(|(_, w)| w.state == worker_state::UP)
        .collect();
    up.sort_by_key(|(s, _)| *s);
    let members: Vec<Member> = up
        .iter()
        // Only the hash table reads keys.
        .map(|(slot, w)| Member {
            slot: *slot,
            weight: w.weight.max(1),
            key: if policy == policy::HASH {
                Member::key_of(crate::endpoints::worker_socket_addr(w))
            } else {
                0
            },
        })
        .collect();
    let mut entry = Function {
        index,
        worker_base: g.worker_base(index),
        ring_base: g.ring_base(index, generation),
        // Generation 0 in the extent's first half, 1 in its second.
        maglev_base: table.map_or(0, |(start, chunks)| {
            start + generation as u32 * (chunks / 2)
        }),
        ring_mask: (g.ring_size - 1) as u16,
        maglev_mask: table.map_or(0, |(_, chunks)| (chunks / 2 * TABLE_CHUNK - 1) as u16),
        policy,
        generation,
        up_count: members.len() as u16,
        slot_end: placed
            .iter()
            .chain(&current)
            .map(|(slot, _)| *slot as u16 + 1)
            .max()
            .unwrap_or(0),
        ..Default::default()
    };
    write_table(
        &mut maps.ring,
        None,
        &tables::ring(&members, g.ring_size),
        entry.ring_base,
    )?;
    if policy != policy::HASH {
        // (A function that left the hash policy needs its memo no more.)
        tables::HashTables::forget(id);
    } else {
        tables::HashTables::with_table(id, &members, entry.maglev_size(), |table| {
            write_table(
                &mut maps.maglev,
                maps.maglev_mapped.as_mut(),
                table,
                entry.maglev_base,
            )
        })?;
    }
    let loads = up_loads(maps, &entry, up.iter().map(|(slot, _)| *slot))?;
    rank(&mut entry, &loads);

    // 4. The flip; then the extent the function no longer uses is free.
    publish(maps, &g, id, entry, previous_row)?;
    if let Some(extent) = held.filter(|h| Some(*h) != table) {
        release_table(maps, extent);
    }

    // 5. Slots that left the set.
    let left: Vec<&(u8, Worker)> = current
        .iter()
        .filter(|(slot, _)| !taken[*slot as usize])
        .collect();
    let keys: Vec<u32> = left
        .iter()
        .map(|(slot, _)| entry.worker_index(*slot as u32))
        .collect();
    map_batch::write(
        &mut maps.workers,
        &keys,
        &vec![Worker::default(); keys.len()],
    )?;
    for (_, w) in left {
        drop_registration(maps, worker_endpoint(w))?;
    }
    Ok(())
}

/// The load ranks (`Load::rank`: relative to weight) of the given slots of
/// function `f` (one batched read of the range they span).
fn up_loads(
    maps: &Maps,
    f: &Function,
    slots: impl Iterator<Item = u8> + Clone,
) -> Result<Vec<(u8, u64)>> {
    let Some(end) = slots.clone().map(|s| s as u32 + 1).max() else {
        return Ok(Vec::new());
    };
    let start = slots.clone().min().unwrap_or(0) as u32;
    let loads = maps.read_loads(f.worker_index(start), end - start)?;
    Ok(slots
        .map(|slot| (slot, loads[(slot as u32 - start) as usize].rank() as u64))
        .collect())
}

/// Ranks a function's least-loaded candidates from its up slots' loads.
fn rank(f: &mut Function, loads: &[(u8, u64)]) {
    let ranked = tables::least_loaded(loads);
    f.ll_slots = [0u8; LL_CANDIDATES];
    f.ll_slots[..ranked.len()].copy_from_slice(&ranked);
    f.ll_count = ranked.len() as u8;
}

/// Writes a whole selection table into its chunks from chunk `first`:
/// through `mapped` where the map is mapped into this process (a copy;
/// the data plane reads this generation only after the FUNCTIONS flip,
/// which is a system call and so orders the copy before it), else in one
/// batched call.
fn write_table(
    map: &mut aya::maps::Array<aya::maps::MapData, TableChunk>,
    mapped: Option<&mut data_plane::mapped::Mapping>,
    table: &[u8],
    first: u32,
) -> Result<()> {
    if let Some(mapped) = mapped {
        // Whole chunks: table lengths are multiples of TABLE_CHUNK
        // (`Geometry::problem`).
        return mapped.write(first as usize * TABLE_CHUNK as usize, table);
    }
    let chunks: Vec<TableChunk> = table
        .chunks(TABLE_CHUNK as usize)
        .map(|c| {
            let mut chunk = [0u8; TABLE_CHUNK as usize];
            chunk[..c.len()].copy_from_slice(c);
            chunk
        })
        .collect();
    let keys: Vec<u32> = (first..first + chunks.len() as u32).collect();
    map_batch::write(map, &keys, &chunks)
        .context("cannot write a selection table (are the maps smaller than their geometry?)")
}

/// Writes the load a worker reported (its in-flight requests) and re-ranks
/// the function's least-loaded candidates.
pub fn set_load(maps: &mut Maps, id: u32, slot: u8, load: u64) -> Result<()> {
    let f = maps
        .functions
        .get(&id, 0)
        .with_context(|| format!("no function {id}"))?;
    write_load(
        maps,
        f.worker_index(slot as u32),
        load.min(u32::MAX as u64) as u32,
    )?;
    refresh_least_loaded(maps, id)
}

/// Writes a worker's reported in-flight requests into LOADS at its cost
/// per request (from its weight in WORKERS).
pub fn write_load(maps: &mut Maps, worker_index: u32, in_flight: u32) -> Result<()> {
    let weight = maps.workers.get(&worker_index, 0)?.weight;
    maps.loads
        .set(worker_index, Load::new(in_flight, weight), 0)?;
    Ok(())
}

/// Re-ranks the least-loaded candidates of function `id` from LOADS.
pub fn refresh_least_loaded(maps: &mut Maps, id: u32) -> Result<()> {
    let f = maps
        .functions
        .get(&id, 0)
        .with_context(|| format!("no function {id}"))?;
    let up: Vec<u8> = function_workers(maps, &f)?
        .into_iter()
        .filter(|(_, w)| w.state == worker_state::UP)
        .map(|(slot, _)| slot)
        .collect();
    rank_least_loaded(maps, id, &up)
}

/// Re-ranks the least-loaded candidates of function `id` among `up_slots`
/// (its up workers, as the caller knows them): one LOADS read per slot and
/// one FUNCTIONS update.
pub fn rank_least_loaded(maps: &mut Maps, id: u32, up_slots: &[u8]) -> Result<()> {
    let mut f = maps
        .functions
        .get(&id, 0)
        .with_context(|| format!("no function {id}"))?;
    let loads = up_loads(maps, &f, up_slots.iter().copied())?;
    let previous_row = f.row;
    rank(&mut f, &loads);
    publish(maps, &maps.geometry()?, id, f, Some(previous_row))
}

/// Makes `entry` the value of function `id`: in the direct table, the row
/// the function did not use last (`previous_row`; None: a new function),
/// then the slot pointing at it, when the slot is free or the function's
/// own (see `FunctionSlot`); then FUNCTIONS, where every function is. An
/// id whose slot another id holds is found through FUNCTIONS alone and
/// counted in the slot's `hashed`; it takes the slot at its first change
/// after the holder left.
fn publish(
    maps: &mut Maps,
    g: &Geometry,
    id: u32,
    mut entry: Function,
    previous_row: Option<u8>,
) -> Result<()> {
    entry.id = id;
    entry.row = previous_row.map_or(0, |r| 1 - r);
    let index = id & (g.function_slots() - 1);
    let slot = maps.function_slots.get(&index, 0)?;
    let new_slot = if slot.holds(id) || slot.is_empty() {
        let row = g.function_row(entry.index, entry.row);
        maps.function_rows.set(row, entry, 0)?;
        let mut held = slot.held(id, row);
        if slot.is_empty() && previous_row.is_some() {
            // It was found through FUNCTIONS alone until now.
            held.hashed = held.hashed.saturating_sub(1);
        }
        held
    } else if previous_row.is_none() {
        FunctionSlot {
            hashed: slot.hashed + 1,
            ..slot
        }
    } else {
        slot
    };
    if new_slot != slot {
        maps.function_slots.set(index, new_slot, 0)?;
    }
    maps.functions.insert(id, entry, 0)?;
    Ok(())
}

/// Removes function `id`: first from FUNCTIONS (no new packet finds it),
/// then its workers.
pub fn remove_function(maps: &mut Maps, id: u32) -> Result<()> {
    let f = maps
        .functions
        .get(&id, 0)
        .with_context(|| format!("no function {id}"))?;
    let index = id & (maps.geometry()?.function_slots() - 1);
    let slot = maps.function_slots.get(&index, 0)?;
    let left = if slot.holds(id) {
        slot.vacated()
    } else {
        FunctionSlot {
            hashed: slot.hashed.saturating_sub(1),
            ..slot
        }
    };
    maps.function_slots.set(index, left, 0)?;
    maps.functions.remove(&id)?;
    if f.policy == policy::HASH {
        release_table(maps, f.maglev_extent());
        tables::HashTables::forget(id);
    }
    for (slot, w) in function_workers(maps, &f)? {
        maps.workers
            .set(f.worker_index(slot as u32), Worker::default(), 0)?;
        drop_registration(maps, worker_endpoint(&w))?;
    }
    Ok(())
}

/// Sets workflow `id` to run `steps` (function ids) in order.
pub fn set_workflow(maps: &mut Maps, id: u32, steps: &[u32]) -> Result<()> {
    if steps.is_empty() || steps.len() > MAX_WORKFLOW_STEPS {
        bail!(
            "workflow {id}: {} steps; give 1 to {MAX_WORKFLOW_STEPS}",
            steps.len()
        );
    }
    if maps.functions.get(&id, 0).is_ok() {
        bail!("{id} is a function id: function and workflow ids share one space");
    }
    if let Some(missing) = steps.iter().find(|s| maps.functions.get(s, 0).is_err()) {
        bail!("workflow {id} runs function {missing}, which does not exist (add it first)");
    }
    let mut functions = [0u32; MAX_WORKFLOW_STEPS];
    functions[..steps.len()].copy_from_slice(steps);
    maps.workflows
        .insert(
            id,
            Workflow {
                step_count: steps.len() as u32,
                functions,
            },
            0,
        )
        .with_context(|| format!("cannot write workflow {id}"))?;
    Ok(())
}

/// Function `id`'s entry and occupied slots, or the error people see.
fn current(maps: &Maps, id: u32) -> Result<(Function, Vec<(u8, Worker)>)> {
    let f = maps
        .functions
        .get(&id, 0)
        .map_err(|_| anyhow!("no function {id} (`dispatcher functions list` shows them)"))?;
    Ok((f, function_workers(maps, &f)?))
}

/// Changes the workers of function `id` with `change` (given them as they
/// are now) and writes the result as one step.
fn change_workers(
    maps: &mut Maps,
    id: u32,
    change: impl FnOnce(&mut Vec<Worker>) -> Result<()>,
) -> Result<()> {
    let (f, slots) = current(maps, id)?;
    let mut workers: Vec<Worker> = slots.iter().map(|(_, w)| *w).collect();
    change(&mut workers)?;
    write_function(maps, id, f.policy, Some((f, slots)), &workers)
}

/// The worker at `addr` among `workers`, or the error people see.
fn find_worker(workers: &mut [Worker], id: u32, addr: SocketAddr) -> Result<&mut Worker> {
    let e = endpoint(addr.ip(), addr.port());
    workers
        .iter_mut()
        .find(|w| worker_endpoint(w) == e)
        .ok_or_else(|| anyhow!("function {id} has no worker {addr} (`dispatcher workers list --function {id}` shows them)"))
}

/// Creates function `id` with `policy` (no workers), or changes the policy
/// of an existing one, keeping its workers.
pub fn add_function(maps: &mut Maps, id: u32, policy: u8) -> Result<()> {
    if maps.workflows.get(&id, 0).is_ok() {
        bail!("{id} is a workflow id: function and workflow ids share one space");
    }
    let current = match maps.functions.get(&id, 0) {
        Ok(_) => Some(current(maps, id)?),
        Err(_) => None,
    };
    let workers: Vec<Worker> = current
        .iter()
        .flat_map(|(_, slots)| slots.iter().map(|(_, w)| *w))
        .collect();
    write_function(maps, id, policy, current, &workers)
}

/// Adds a worker to function `id` (or updates it, if already there), up.
pub fn add_worker(maps: &mut Maps, id: u32, worker: Worker) -> Result<()> {
    let most = maps.geometry()?.workers_per_function;
    change_workers(maps, id, |workers| {
        let e = worker_endpoint(&worker);
        match workers.iter().position(|w| worker_endpoint(w) == e) {
            Some(k) => workers[k] = worker,
            None if workers.len() >= most as usize => {
                bail!("function {id} has {most} workers already, the most the data plane holds per function")
            }
            None => workers.push(worker),
        }
        Ok(())
    })
}

/// Removes the worker at `addr` from function `id`.
pub fn remove_worker(maps: &mut Maps, id: u32, addr: SocketAddr) -> Result<()> {
    change_workers(maps, id, |workers| {
        let e = find_worker(workers, id, addr).map(|w| worker_endpoint(w))?;
        workers.retain(|w| worker_endpoint(w) != e);
        Ok(())
    })
}

/// Sets the state of the worker at `addr` of function `id`: DRAINING (and
/// DOWN) workers leave the live tables, so they get no new requests, while
/// requests already sent to them finish.
pub fn set_worker_state(maps: &mut Maps, id: u32, addr: SocketAddr, state: u8) -> Result<()> {
    change_workers(maps, id, |workers| {
        find_worker(workers, id, addr)?.state = state;
        Ok(())
    })
}

/// Removes workflow `id`.
pub fn remove_workflow(maps: &mut Maps, id: u32) -> Result<()> {
    maps.workflows
        .remove(&id)
        .map_err(|_| anyhow!("no workflow {id} (`dispatcher workflows list` shows them)"))?;
    Ok(())
}

/// Makes the maps match `config` exactly: applies it (as `apply`), then
/// removes functions, workflows and services the config no longer has.
/// Unchanged functions keep their slots, loads and counters; each changed
/// one switches in one step (see the module comment).
pub fn reconcile(maps: &mut Maps, config: &Config) -> Result<()> {
    apply(maps, config)?;
    // The ids a map holds that `keep` does not.
    let stale = |held: Vec<u32>, keep: std::collections::HashSet<u32>| -> Vec<u32> {
        held.into_iter().filter(|id| !keep.contains(id)).collect()
    };
    let held = maps.workflows.keys().filter_map(|k| k.ok()).collect();
    for id in stale(held, config.workflows.iter().map(|w| w.id).collect()) {
        remove_workflow(maps, id)?;
    }
    let held = maps.functions.keys().filter_map(|k| k.ok()).collect();
    for id in stale(held, config.functions.iter().map(|f| f.id).collect()) {
        remove_function(maps, id)?;
    }
    let keep_services: Vec<Endpoint> = config
        .service
        .addresses
        .iter()
        .map(|a| endpoint(*a, config.service.port))
        .collect();
    for i in 0..maps.geometry()?.service_slots {
        let slot = maps.services.get(&i, 0)?;
        if slot.in_use != 0 && !keep_services.contains(&slot.endpoint) {
            maps.services.set(i, ServiceSlot::default(), 0)?;
        }
    }
    Ok(())
}

/// Sets the destination MAC of the worker at `addr` of function `id`.
pub fn with_mac(maps: &mut Maps, id: u32, addr: SocketAddr, mac: [u8; 6]) -> Result<()> {
    change_workers(maps, id, |workers| {
        find_worker(workers, id, addr)?.mac = mac;
        Ok(())
    })
}
