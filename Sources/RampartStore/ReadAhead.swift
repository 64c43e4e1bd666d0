import RampartCore

/// What a drain's refreshes will read from the store, read ahead together with the change-log
/// rows that asked for them, in the same statement and snapshot (`PostgresStore`'s
/// `rampart_log_read_ahead`, schema versions 10 and 11: since 11 also the members of the groups
/// a rules refresh's group references, which its refresh reads afresh when no other group here
/// references them).
///
/// Why: a daemon applying a members change read its log (one round trip), then the group's
/// members (another), then recorded its position (a third); the host that plugged the instance
/// read the instance, its new group and the members besides. With ten daemons and the server on
/// two cores every statement is CPU that the others wait for (`rampart-bench controller`: the
/// machine ~94 % busy during a ten-host series), and the last host's reads were its slowest
/// phase after the kernel's. Read with the rows, a members or rules change costs a daemon two
/// statements (this read, its position write) instead of three, and the plugging host two
/// instead of five.
///
/// The answers are at least as new as the rows read with them (one snapshot), which is all a
/// refresh asks of its reads: whatever changes after it has a later row, applied by a later
/// drain. A key absent here is read from the store as before.
public struct ReadAhead: Sendable, Equatable {
    /// Instance records by id (nil: no such instance), for the instance refreshes.
    public var instances: [String: Instance?] = [:]
    /// Groups by id (nil: no such group), for the rules refreshes and the groups of each
    /// instance read.
    public var groups: [String: Group?] = [:]
    /// Every member's record by group (`Store.memberRecords(of:)`), for the members refreshes
    /// and the groups the rules refreshes' groups reference.
    public var members: [String: [String: Instance]] = [:]

    public init(instances: [String: Instance?] = [:], groups: [String: Group?] = [:], members: [String: [String: Instance]] = [:]) {
        self.instances = instances
        self.groups = groups
        self.members = members
    }

    public var isEmpty: Bool { instances.isEmpty && groups.isEmpty && members.isEmpty }

    /// `other`'s answers over these: it was read later.
    public mutating func merge(_ other: ReadAhead) {
        instances.merge(other.instances) { _, new in new }
        groups.merge(other.groups) { _, new in new }
        members.merge(other.members) { _, new in new }
    }
}
