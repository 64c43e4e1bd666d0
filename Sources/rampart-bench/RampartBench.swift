import ArgumentParser

/// `rampart-bench`: one subcommand per area. Each prints, from one run, medians of Rampart's
/// operations beside the baselines measured in the same run, and with `--json` one JSON array
/// of figures instead (see `Report`).
@main
struct RampartBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rampart-bench",
        abstract: "Benchmarks of Rampart beside their baselines, measured in the same run.",
        subcommands: [NetlinkBench.self, EngineBench.self, NFTablesBench.self, IPTablesBench.self, DaemonBench.self, ConntrackBench.self,
                      ControllerBench.self, FleetBench.self, PacketBench.self, EC2Bench.self, RulesJSONBench.self]
    )
}

/// Options every subcommand shares.
struct CommonBenchOptions: ParsableArguments {
    @Flag(help: "Print one JSON array of figures on standard output instead of a table.")
    var json = false

    @Option(help: "Repetitions per figure (the median is reported).")
    var repeats: Int?
}
