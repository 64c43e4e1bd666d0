import RampartCore

/// Rule 9's `guarded_prefixes` as the IR carries them (read off the IR's egress base chain by
/// RampartCore, so they can never disagree with the nftables layout).
enum GuardedPrefixes {
    static func of(_ ir: RulesetIR) -> [String] { ir.guardedPrefixes }
}
