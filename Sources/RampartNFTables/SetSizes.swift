import RampartCore
import RampartNetlink

/// Sizes of the slot layout's large sets, and the check that a batch stays within them.
///
/// Why sized: a set created without a size is a resizable hash (`nft_rhash`) that starts at 4
/// buckets and is grown by a worker behind the inserts. A cold apply inserts ~60,000 elements
/// into a handful of sets in one batch; the worker cannot keep up, and most inserts take
/// `rhashtable_insert_slow` down long chains: ~40 % of the kernel's share of a host-5k cold
/// apply (`docs/nftables-bench.md`). A set created with a size is a hash of that size from the
/// start (`nft_hash`), with no resizing at all.
///
/// The catch: the kernel treats the size as a hard limit (an element past it is refused with
/// ENFILE) and cannot change it in place. So a set is created at twice what it will hold,
/// rounded up to a power of two (at least `minimum`), and a batch that would take a set past
/// its size is sent instead as a rebuild of the whole table (`NFTablesBackend`): one
/// transaction that deletes the table and creates it again with sizes for what it then holds,
/// which packets see as one switch (conntrack, outside the table, keeps every connection). The
/// sizes double each time, so a host that grows from nothing to N elements in a set pays
/// log2(N / minimum) rebuilds over its life.
///
/// Only the sets whose element count grows with the host are sized: the per-interface sets
/// (`Compiler.fixedSets`), the `members` sets and `inst-groups`. The group chains' shape sets
/// grow with the rules (a few per group) and stay resizable, as do the small verdict maps.
enum SetSizes {
    /// The sets sized when created.
    static let names: Set<String> = Set(Compiler.fixedSets.map(\.0)).union([
        Slots.Members.set4, Slots.Members.set6, Slots.instanceGroups,
    ])

    /// The smallest size given (the kernel allocates a bucket head, 8 bytes, per 3/4 element
    /// of size: 16 KiB per set at 1,024).
    static let defaultMinimum: UInt32 = 1024

    /// The size a set created to hold `count` elements gets: twice that, as a power of two, at
    /// least `minimum`.
    static func size(for count: Int, minimum: UInt32) -> UInt32 {
        let want = max(Int(minimum), 2 * count, 1)
        var size = 1
        while size < want { size <<= 1 }
        return UInt32(clamping: size)
    }

    /// Gives each sized set that `batch` creates its size (from the most it holds during the
    /// batch) and brings `state`'s counts to what the kernel will hold after it. Returns the
    /// existing sets the batch would take past their size, in batch order (empty: it fits). A
    /// set read back without a size (written by an earlier release) has no limit.
    ///
    /// The count is followed operation by operation, as the kernel checks it: an element is
    /// refused when the set's elements plus those added so far in the batch, less those it
    /// deleted so far, reach the size.
    static func fit(_ batch: inout Batch, _ state: inout SlotState, minimum: UInt32) -> [String] {
        var created: [String: (index: Int, peak: Int)] = [:]
        var outgrown: [String] = []
        // One lookup per operation: this runs on every commit (a plug's six messages).
        for (i, op) in batch.operations.enumerated() {
            switch op {
            case .addTable, .deleteTable:
                state.sizedSets = [:]
                created = [:]
            case .addSet(let d) where names.contains(d.name) && state.sizedSets[d.name] == nil:
                state.sizedSets[d.name] = SetFill(count: 0, size: nil)
                created[d.name] = (i, 0)
            case .deleteSet(_, _, let n) where names.contains(n):
                state.sizedSets[n] = nil
                created[n] = nil
            case .flushSet(_, _, let n):
                if let k = state.sizedSets.index(forKey: n) { state.sizedSets.values[k].count = 0 }
            case .addElements(_, _, let s, let e):
                guard let k = state.sizedSets.index(forKey: s) else { continue }
                state.sizedSets.values[k].count += e.count
                let fill = state.sizedSets.values[k]
                if fill.size == nil, let made = created[s] {
                    created[s]!.peak = max(made.peak, fill.count)
                } else if let size = fill.size, fill.count > Int(size), !outgrown.contains(s) {
                    outgrown.append(s)
                }
            case .deleteElements(_, _, let s, let e):
                if let k = state.sizedSets.index(forKey: s) { state.sizedSets.values[k].count = max(0, state.sizedSets.values[k].count - e.count) }
            default:
                break
            }
        }
        for (name, made) in created {
            guard case .addSet(var d) = batch.operations[made.index] else { continue }
            d.size = size(for: made.peak, minimum: minimum)
            batch.operations[made.index] = .addSet(d)
            state.sizedSets[name]?.size = d.size
        }
        return outgrown
    }

    /// The sized sets' counts and sizes as read back (a set without a size has no limit).
    static func read(_ snap: TableSnapshot, into state: inout SlotState) {
        for def in snap.sets where names.contains(def.name) {
            state.sizedSets[def.name] = SetFill(count: snap.elements[def.name]?.count ?? 0, size: def.size)
        }
    }
}

/// A sized set's element count, and its size (nil: created without one, so unlimited; or
/// created in the batch being fitted, sized at its end).
struct SetFill: Sendable, Hashable {
    var count: Int
    var size: UInt32?
}
