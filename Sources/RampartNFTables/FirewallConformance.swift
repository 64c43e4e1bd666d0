import Foundation
import RampartCore
import RampartNetlink

/// The nftables backend as the CLI and the daemon see it. `commit`, `converge` and `pending`
/// are its own (Backend.swift); the rest reads the table back or asks for the generation.
extension NFTablesBackend: FirewallBackend {
    public var name: String { "nftables" }

    public var generation: UInt32? { mirrorGeneration }

    /// One GETGEN: has anyone committed (any table) since our last commit or read-back?
    public func changedByOthers() throws -> Bool {
        try client.generation() != mirrorGeneration
    }

    /// Instances the table dispatches to: entries of the dispatch map, or instance chains
    /// (`out-…`) when the map is gone.
    public func enforcedInstances() throws -> Int {
        guard let ir = try readBack(reference: nil) else { return 0 }
        let mapped = ir.maps[Naming.fromInstanceMap]?.elements.count ?? 0
        let chains = ir.chains.keys.reduce(0) { $0 + ($1.hasPrefix("out-") ? 1 : 0) }
        return max(mapped, chains)
    }

    public func enforcement() throws -> EnforcementReport? {
        guard let snap = try client.readTable(family: .inet, name: table) else { return nil }
        let view = EnforcementView(snap)
        return EnforcementReport(text: view.text, json: try RampartJSON.text(view, pretty: true))
    }

    public func warnings() -> [String] { [] }
}

extension NetlinkError: BackendFailure {
    /// A generation change refused the batch whole (someone else committed); a kernel error
    /// for one message refused it whole too; anything else leaves the outcome unknown.
    public var kind: BackendFailureKind {
        switch self {
        case .generationChanged: .conflict
        case .rejected: .refused
        default: .unknown
        }
    }
}
