/// What revocation asks about a host's local instances (`Revocation.scope`, `Revocation.run`):
/// which chains serve whom, and which interface has which address.
///
/// Two answers, equal by construction and checked equal after every random event
/// (`PropertyTests.incrementalPlansEqualFullCompile`): the IR's (`IRLocalInstances`, walks of
/// the dispatch maps, instance chains and anti-spoofing sets: they grow with the host) and the
/// engine's (`Engine`, from the model's indexes: they grow with what is asked about). A daemon
/// passes its engine, so that a revoke or an unplug at a host of 1,000 instances costs what it
/// touches.
public protocol LocalInstances {
    /// For each of `chains` that some local instance with an address reaches — a group chain
    /// through the instance chains that jump to it, an instance chain as its own instance's —
    /// those instances' addresses. Chains no local instance reaches (and base chains) are absent.
    func localAddresses(reaching chains: Set<String>) -> [String: Set<IPAddress>]
    /// The addresses of the local instance on `interface` (none: no instance there).
    func addresses(onInterface interface: String) -> Set<IPAddress>
    /// The interface of the local instance that has `address` (nil: none has it).
    func interface(of address: IPAddress) -> String?
    /// Every local instance's address.
    var everyAddress: Set<IPAddress> { get }
}

/// A host's local instances as its IR has them: the address index is built on the first
/// question about an address or an interface; `localAddresses(reaching:)` walks on every call.
public final class IRLocalInstances: LocalInstances {
    public let ir: RulesetIR
    public init(_ ir: RulesetIR) { self.ir = ir }

    /// Address → interface and interface → addresses, from the anti-spoofing sets.
    private lazy var index: (interfaceOf: [IPAddress: String], byInterface: [String: Set<IPAddress>]) = {
        var interfaceOf: [IPAddress: String] = [:], byInterface: [String: Set<IPAddress>] = [:]
        for (iface, a) in sourcePairs() {
            interfaceOf[a] = iface
            byInterface[iface, default: []].insert(a)
        }
        return (interfaceOf, byInterface)
    }()

    /// The (interface, address) pairs of the anti-spoofing sets.
    private func sourcePairs() -> [(String, IPAddress)] {
        var out: [(String, IPAddress)] = []
        for name in [Naming.sources4, Naming.sources6] {
            for e in ir.sets[name]?.elements ?? [] {
                switch e {
                case .ifaceIPv4(let i, let v4): out.append((i, .v4(v4)))
                case .ifaceIPv6(let i, let v6): out.append((i, .v6(v6)))
                default: continue
                }
            }
        }
        return out
    }

    /// One walk of the dispatch maps and the instance chains they lead to; addresses are
    /// collected only for the interfaces that reach one of `chains`.
    public func localAddresses(reaching chains: Set<String>) -> [String: Set<IPAddress>] {
        guard !chains.isEmpty else { return [:] }
        var reachedFrom: [String: Set<String>] = [:]  // interface → chains of `chains` it reaches
        for map in [Naming.fromInstanceMap, Naming.toInstanceMap] {
            for (iface, v) in ir.maps[map]?.elements ?? [:] {
                guard let c = v.chainReference else { continue }
                if chains.contains(c) { reachedFrom[iface, default: []].insert(c) }
                for r in ir.chains[c]?.rules ?? [] {
                    if let g = r.verdict.chainReference, chains.contains(g) { reachedFrom[iface, default: []].insert(g) }
                }
            }
        }
        guard !reachedFrom.isEmpty else { return [:] }
        var out: [String: Set<IPAddress>] = [:]
        for (iface, a) in sourcePairs() {
            for c in reachedFrom[iface] ?? [] { out[c, default: []].insert(a) }
        }
        return out
    }

    public func addresses(onInterface interface: String) -> Set<IPAddress> { index.byInterface[interface] ?? [] }
    public func interface(of address: IPAddress) -> String? { index.interfaceOf[address] }
    public var everyAddress: Set<IPAddress> { Set(index.interfaceOf.keys) }
}
