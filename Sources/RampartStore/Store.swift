import Foundation
import RampartCore

/// One refresh call of the original design, as delivered to one host's daemon.
public enum Refresh: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// `refresh_security_group_members(group)`
    case members(String)
    /// `refresh_security_group_rules(group)`
    case rules(String)
    /// An instance was added, removed or changed on the receiving host.
    case instance(String)
    /// Reload the host's whole document (after an import).
    case host

    public var description: String {
        switch self {
        case .members(let g): "refresh_security_group_members(\(g))"
        case .rules(let g): "refresh_security_group_rules(\(g))"
        case .instance(let i): "refresh_instance(\(i))"
        case .host: "refresh_host"
        }
    }

    /// Its spelling in the change log's `refresh` column: `members:G`, `rules:G`, `instance:I`,
    /// `host` (ids never contain a colon's meaning: only the first colon separates).
    public var logText: String {
        switch self {
        case .members(let g): "members:\(g)"
        case .rules(let g): "rules:\(g)"
        case .instance(let i): "instance:\(i)"
        case .host: "host"
        }
    }

    /// Parses `logText`; nil for anything else.
    public init?(logText: String) {
        if logText == "host" { self = .host; return }
        guard let colon = logText.firstIndex(of: ":") else { return nil }
        let id = String(logText[logText.index(after: colon)...])
        guard !id.isEmpty else { return nil }
        switch logText[..<colon] {
        case "members": self = .members(id)
        case "rules": self = .rules(id)
        case "instance": self = .instance(id)
        default: return nil
        }
    }

    /// The API path that delivers it.
    public var path: String {
        switch self {
        case .members(let g): "/v1/refresh/members/\(g)"
        case .rules(let g): "/v1/refresh/rules/\(g)"
        case .instance(let i): "/v1/refresh/instance/\(i)"
        case .host: "/v1/refresh/host"
        }
    }
}

/// A refresh call for one host: the fan-out of a controller verb.
public struct Delivery: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var host: String
    public var refresh: Refresh
    /// Its position in the host's change log, where the store keeps one (PostgreSQL): the
    /// daemon has applied it once the host's applied position reaches it.
    public var sequence: Int64?
    public init(host: String, refresh: Refresh, sequence: Int64? = nil) {
        self.host = host
        self.refresh = refresh
        self.sequence = sequence
    }
    public static func < (a: Self, b: Self) -> Bool { (a.host, a.refresh) < (b.host, b.refresh) }
    public var description: String { "\(host): \(refresh)" }
}

/// The controller's store. Every mutating call is one transaction and returns the refresh
/// calls that must be delivered (the fan-out), computed in the same transaction.
/// `SQLiteStore` is the embedded default; `PostgresStore` runs the same SQL (`SQLStore`) on a
/// shared PostgreSQL and appends each fan-out to the hosts' change logs (docs/postgres.md).
public protocol Store: AnyObject, Sendable {
    // reads (the daemon)
    func document(forHost host: String) throws(StoreError) -> Document
    func group(_ id: String) throws(StoreError) -> Group?
    func groupExists(_ id: String) throws(StoreError) -> Bool
    func instance(_ id: String) throws(StoreError) -> Instance?
    func memberRecords(of group: String) throws(StoreError) -> [String: Instance]
    func hosts() throws(StoreError) -> [String]
    /// Whether a verb ever registered `host` (an instance added for it, a document imported).
    func knowsHost(_ host: String) throws(StoreError) -> Bool
    /// The document `rampart export` prints: restores exactly through `import`.
    func exportDocument(forHost host: String) throws(StoreError) -> Document
    // fan-out
    func hostsForMembersRefresh(_ group: String) throws(StoreError) -> [String]
    func hostsForRulesRefresh(_ group: String) throws(StoreError) -> [String]
    // controller verbs
    func createGroup(_ id: String, description: String?) throws(StoreError) -> [Delivery]
    func deleteGroup(_ id: String) throws(StoreError) -> [Delivery]
    func authorize(group: String, rule: Rule) throws(StoreError) -> [Delivery]
    func revoke(group: String, rule: Rule?, id: String?) throws(StoreError) -> [Delivery]
    func addInstance(_ id: String, _ instance: Instance) throws(StoreError) -> [Delivery]
    func removeInstance(_ id: String) throws(StoreError) -> [Delivery]
    func setGroups(instance id: String, groups: [String]) throws(StoreError) -> [Delivery]
    func importDocument(_ document: Document) throws(StoreError) -> [Delivery]
    /// Sets a host's guarded interface-name prefixes (`guarded_prefixes`; empty: none).
    func setGuardedPrefixes(host: String, _ prefixes: [String]) throws(StoreError) -> [Delivery]
}

/// The rules of a group as stored: the JSON array of the document format.
public enum RulesCodec {
    /// The rules array, written by Core's one JSON writer (the document's own spelling).
    public static func encode(_ rules: [Rule]) -> String { Rule.jsonText(rules) }

    /// Parses a rules array (document syntax) for `group`; `references` names the groups its
    /// rules may reference besides `group` itself. Issues name `groups.<group>.rules[i]…`.
    public static func decode(_ json: String, group: String, references: [String]) throws(StoreError) -> [Rule] {
        let known = Set(references).union([group])
        do {
            return try Rule.parseList(json: json, at: "groups.\(group).rules", groupExists: { known.contains($0) })
        } catch {
            throw StoreError(.invalid, error.description)
        }
    }

    /// One rule from its JSON object text, validated as the spec says (errors name the rule).
    public static func parseRule(_ json: String, group: String, references: [String]) throws(StoreError) -> Rule {
        let rules = try decode("[" + json + "]", group: group, references: references)
        guard let r = rules.first else { throw StoreError(.invalid, "no rule") }
        return r
    }
}
