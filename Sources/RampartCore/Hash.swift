/// FNV-1a, 64 bit: a hash identical across processes and runs (the iptables backend derives
/// short chain and set names from it, which must be the same in every run), which Swift's
/// per-process seeded `Hasher` is not.
public struct FNV1a: Sendable {
    /// The hash of everything mixed so far.
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    /// Mixes raw bytes.
    public mutating func mix<S: Sequence>(bytes: S) where S.Element == UInt8 {
        for b in bytes {
            value ^= UInt64(b)
            value = value &* 0x100_0000_01b3
        }
    }

    /// Mixes a string followed by a separator byte that cannot occur in it, so that
    /// ("ab","c") and ("a","bc") differ.
    public mutating func mix(_ s: String) {
        mix(bytes: s.utf8)
        mix(bytes: CollectionOfOne(0))
    }

    /// The hash of one string (with its separator).
    public static func hash(_ s: String) -> UInt64 {
        var h = FNV1a()
        h.mix(s)
        return h.value
    }
}
