import ArgumentParser

/// `rampart-bench netlink`: not written yet.
struct NetlinkBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "netlink", abstract: "Netlink layer benchmarks (not implemented yet).")
    @OptionGroup var options: CommonBenchOptions
    func run() throws { throw ValidationError("the netlink benchmark is not implemented yet") }
}
