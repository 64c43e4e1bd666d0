import RampartNetlink
import RampartSystem

/// An in-memory stand-in for the kernel's nftables, for testing higher layers without root.
///
/// It records every batch it is given (so tests can assert the exact operations sent) and
/// applies them to an in-memory ruleset with the kernel's main rules: a batch is atomic; objects
/// must exist before they are used; a chain or set still referenced cannot be deleted (EBUSY);
/// deleting something absent is ENOENT; each commit bumps the generation, and a batch guarded by
/// an older generation is refused. It is a model, not an emulator: it does not evaluate packets.
public final class RecordingNFTables: NFTablesClient {
    /// Every batch committed successfully, in order.
    public private(set) var committed: [Batch] = []
    /// Every batch offered, including refused ones.
    public private(set) var offered: [Batch] = []
    public private(set) var currentGeneration: UInt32 = 1
    private var tables: [TableKey: TableSnapshot] = [:]

    private struct TableKey: Hashable { var family: NFTFamily; var name: String }

    public init() {}

    public func generation() throws(NetlinkError) -> UInt32 { currentGeneration }

    /// Simulates another process committing (the generation moves on).
    public func bumpGeneration() { currentGeneration &+= 1 }

    /// Lets a test change the "kernel" behind Rampart's back (drift).
    public func mutateTable(family: NFTFamily, name: String, _ body: (inout TableSnapshot) -> Void) {
        let key = TableKey(family: family, name: name)
        guard var t = tables[key] else { return }
        body(&t)
        tables[key] = t
        currentGeneration &+= 1
    }

    public func readTable(family: NFTFamily, name: String) throws(NetlinkError) -> TableSnapshot? {
        guard var t = tables[TableKey(family: family, name: name)] else { return nil }
        t.generation = currentGeneration
        return t
    }

    @discardableResult
    public func commit(_ batch: Batch, expectedGeneration: UInt32?) throws(NetlinkError) -> CommitResult {
        offered.append(batch)
        if let expectedGeneration, expectedGeneration != currentGeneration {
            throw .generationChanged(expected: expectedGeneration)
        }
        var state = tables
        var failures: [OperationFailure] = []
        for (i, op) in batch.operations.enumerated() {
            if let e = Self.apply(op, to: &state) {
                failures.append(.refused(op, at: i, errno: e))
            }
        }
        if !failures.isEmpty { throw .rejected(failures) }
        tables = state
        committed.append(batch)
        currentGeneration &+= 1
        return CommitResult(generation: currentGeneration, messages: batch.operations.count, bytes: 0)
    }

    private static func apply(_ op: BatchOperation, to state: inout [TableKey: TableSnapshot]) -> Errno? {
        func withTable(_ f: NFTFamily, _ n: String, _ body: (inout TableSnapshot) -> Errno?) -> Errno? {
            let key = TableKey(family: f, name: n)
            guard var t = state[key] else { return .ENOENT }
            let e = body(&t)
            if e == nil { state[key] = t }
            return e
        }
        switch op {
        case .addTable(let t):
            let key = TableKey(family: t.family, name: t.name)
            if state[key] == nil { state[key] = TableSnapshot(table: t) } else { state[key]!.table.flags = t.flags }
            return nil
        case .deleteTable(let f, let n):
            return state.removeValue(forKey: TableKey(family: f, name: n)) == nil ? .ENOENT : nil
        case .addChain(let c):
            return withTable(c.family, c.table) { t in
                if let i = t.chains.firstIndex(where: { $0.name == c.name }) {
                    if (t.chains[i].base == nil) != (c.base == nil) { return .EEXIST }
                    t.chains[i] = c
                } else {
                    t.chains.append(c)
                    t.rules[c.name] = []
                }
                return nil
            }
        case .deleteChain(let f, let tn, let n):
            return withTable(f, tn) { t in
                guard let i = t.chains.firstIndex(where: { $0.name == n }) else { return .ENOENT }
                // Like the kernel, deleting a chain deletes its own rules, but a chain that other
                // rules or map elements still jump to at this point of the batch is busy.
                let byRule = t.rules.filter { $0.key != n }.values.joined().contains { $0.expressions.contains { $0.referencedChain == n } }
                let byElement = t.elements.values.joined().contains { $0.verdict?.target == n }
                if byRule || byElement { return .EBUSY }
                t.chains.remove(at: i)
                t.rules[n] = nil
                return nil
            }
        case .flushChain(let f, let tn, let n):
            return withTable(f, tn) { t in
                guard t.rules[n] != nil else { return .ENOENT }
                t.rules[n] = []
                return nil
            }
        case .addRule(let r):
            return withTable(r.family, r.table) { t in
                guard t.rules[r.chain] != nil else { return .ENOENT }
                for e in r.expressions {
                    if let s = e.referencedSet, t.set(s) == nil { return .ENOENT }
                    if let c = e.referencedChain, t.rules[c] == nil { return .ENOENT }
                    if case .foreign = e { return .EINVAL }
                }
                var stored = r
                stored.handle = nil
                t.rules[r.chain]!.append(stored)
                return nil
            }
        case .insertRule, .deleteRule:
            // The fake keeps no rule handles and offers no `readRules`, so nothing edits its
            // chains rule by rule; a batch that tries is refused like an unknown handle.
            return .ENOENT
        case .addSet(let d):
            return withTable(d.family, d.table) { t in
                if let existing = t.set(d.name) { return existing.keyType == d.keyType ? nil : .EEXIST }
                t.sets.append(d)
                t.elements[d.name] = []
                return nil
            }
        case .deleteSet(let f, let tn, let n):
            return withTable(f, tn) { t in
                guard let i = t.sets.firstIndex(where: { $0.name == n }) else { return .ENOENT }
                let used = t.rules.values.joined().contains { $0.expressions.contains { $0.referencedSet == n } }
                if used { return .EBUSY }
                t.sets.remove(at: i)
                t.elements[n] = nil
                return nil
            }
        case .flushSet(let f, let tn, let n):
            return withTable(f, tn) { t in
                guard t.elements[n] != nil else { return .ENOENT }
                t.elements[n] = []
                return nil
            }
        case .addElements(let f, let tn, let s, let elements):
            return withTable(f, tn) { t in
                guard let def = t.set(s) else { return .ENOENT }
                for e in elements {
                    if e.key.count != Int(def.keyLength) { return .EINVAL }
                    if def.isVerdictMap != (e.verdict != nil) { return .EINVAL }
                    if let c = e.verdict?.target, t.rules[c] == nil { return .ENOENT }
                    if let i = t.elements[s]!.firstIndex(where: { $0.key == e.key }) {
                        t.elements[s]![i] = e
                    } else {
                        // Like the kernel: a sized set refuses an element past its size.
                        if let size = def.size, t.elements[s]!.count >= Int(size) { return .ENFILE }
                        t.elements[s]!.append(e)
                    }
                }
                return nil
            }
        case .deleteElements(let f, let tn, let s, let elements):
            return withTable(f, tn) { t in
                guard t.elements[s] != nil else { return .ENOENT }
                for e in elements {
                    guard let i = t.elements[s]!.firstIndex(where: { $0.key == e.key }) else { return .ENOENT }
                    t.elements[s]!.remove(at: i)
                }
                return nil
            }
        }
    }
}
