import RampartCore

/// Rule 9's `guarded_prefixes` as the IR carries them.
///
/// PLACEHOLDER until `RulesetIR.guardedPrefixes` lands in RampartCore (the lead computes it from
/// the IR's base chains): no prefixes. Callers that know them (tests) pass `guarded:` explicitly.
enum GuardedPrefixes {
    static func of(_ ir: RulesetIR) -> [String] { [] }
}
