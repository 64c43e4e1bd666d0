import RampartNetlink

/// A chain's rewrite sent as the rules that differ: the rules the kernel holds and the new
/// rules share a longest common subsequence, which stays in place (same handles, same
/// counters); every other held rule is deleted by handle, and every new rule not among them is
/// inserted just before the next kept rule (or appended after the last).
///
/// Why: the kernel re-validates the whole table at commit when a batch adds a rule (from every
/// base chain through every group chain: ~9 ms at host-10k with 2,000 groups), but not when it
/// deletes one. Sent as flush + re-add, revoking one rule of a group paid that walk; sent as
/// its delete, it pays nothing that grows with the host. Adding a rule still pays the walk,
/// once per batch whatever else it holds. The kept rules also keep their counters, which a
/// flush reset on every edit of their group.
struct ChainEdit: Equatable {
    /// Rules the kernel holds that go, by handle.
    var deletions: [UInt64] = []
    /// Each new rule that is not kept, by its index in the new rules, and the handle of the
    /// kept rule it goes before (nil: appended).
    var insertions: [(index: Int, before: UInt64?)] = []

    static func == (a: ChainEdit, b: ChainEdit) -> Bool {
        a.deletions == b.deletions && a.insertions.map(\.index) == b.insertions.map(\.index)
            && a.insertions.map(\.before) == b.insertions.map(\.before)
    }

    /// Beyond this many rule pairs, the comparison (quadratic) is not worth it: rewrite whole.
    static let maxPairs = 250_000

    /// The edit from `held` (read back, with handles) to `wanted` (as it would be sent), or nil
    /// when a whole rewrite is as good or the comparison is not possible: nothing to keep, a held
    /// rule without a handle, or chains too long to compare.
    static func between(held: [NFTRule], wanted: [NFTRule]) -> ChainEdit? {
        guard !held.isEmpty, !wanted.isEmpty, held.count * wanted.count <= maxPairs,
              held.allSatisfy({ $0.handle != nil }) else { return nil }
        let h = held.map(Shape.init), w = wanted.map(Shape.init)
        // Longest common subsequence, by suffix lengths: lcs[i][j] for held[i...], wanted[j...].
        let n = h.count, m = w.count
        var lcs = [Int](repeating: 0, count: (n + 1) * (m + 1))
        for i in stride(from: n - 1, through: 0, by: -1) {
            for j in stride(from: m - 1, through: 0, by: -1) {
                lcs[i * (m + 1) + j] = h[i] == w[j] ? lcs[(i + 1) * (m + 1) + j + 1] + 1
                    : max(lcs[(i + 1) * (m + 1) + j], lcs[i * (m + 1) + j + 1])
            }
        }
        guard lcs[0] > 0 else { return nil }
        var keptHandleOf = [UInt64?](repeating: nil, count: m)  // per wanted rule: the held rule it keeps
        var edit = ChainEdit()
        var i = 0, j = 0
        while i < n && j < m {
            if h[i] == w[j] {
                keptHandleOf[j] = held[i].handle
                i += 1; j += 1
            } else if lcs[(i + 1) * (m + 1) + j] >= lcs[i * (m + 1) + j + 1] {
                edit.deletions.append(held[i].handle!)
                i += 1
            } else {
                j += 1
            }
        }
        while i < n { edit.deletions.append(held[i].handle!); i += 1 }
        var nextKept: UInt64?
        var insertions: [(index: Int, before: UInt64?)] = []
        for j in stride(from: m - 1, through: 0, by: -1) {
            if let k = keptHandleOf[j] { nextKept = k } else { insertions.append((j, nextKept)) }
        }
        edit.insertions = insertions.reversed()
        return edit
    }

    /// What makes two rules the same rule: the bytecode without the counters' values, the
    /// comment and the tag (userdata).
    private struct Shape: Equatable {
        let expressions: [NFTExpr]
        let comment: String?
        let tag: [UInt8]?
        init(_ r: NFTRule) {
            expressions = Translate.withoutCounts(r.expressions)
            comment = r.comment
            tag = r.tag
        }
    }

    /// The edit as batch operations, deletions first; `wanted` as given to `between`.
    func operations(wanted: [NFTRule]) -> [BatchOperation] {
        guard let first = wanted.first else { return [] }
        var ops = deletions.map { BatchOperation.deleteRule(family: first.family, table: first.table, chain: first.chain, handle: $0) }
        for (index, before) in insertions {
            ops.append(before.map { .insertRule(wanted[index], before: $0) } ?? .addRule(wanted[index]))
        }
        return ops
    }
}
