import Testing
import RampartHarness
@testable import RampartNetlink

@Suite("Smoke") struct SmokeTests {
    @Test func createAndReadBack() throws {
        let k = try KernelFixture()
        let g0 = try k.nl.generation()
        var b = Batch()
        b.append(.addTable(Table(family: .inet, name: T)))
        b.append(.addChain(Chain(family: .inet, table: T, name: "fwd", base: BaseChainSpec(hook: .forward, priority: 0))))
        b.append(.addChain(Chain(family: .inet, table: T, name: "c1")))
        b.append(.addSet(SetDefinition(family: .inet, table: T, name: "s4", keyType: .ipv4Address)))
        b.append(.addElements(family: .inet, table: T, set: "s4", elements: [SetElement(key: ip4("10.0.0.1"))]))
        b.append(.addRule(rule("fwd", Match.address(.source, ipv6: false, inSet: "s4") + Match.port(protocol: 6, destination: true, 22...22) + Match.counter + [.verdict(.jump("c1"))], comment: "hello")))
        let r = try k.nl.commit(b)
        print("gen", g0, r)
        let snap = try #require(try k.nl.readTable(family: .inet, name: T))
        print(snap)
        print(try k.ns.nft("list", "ruleset").stdout)
    }
}
