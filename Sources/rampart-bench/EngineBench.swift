import ArgumentParser

/// `rampart-bench engine`: the in-memory core (compile, events, fan-out). Not written yet.
struct EngineBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "engine", abstract: "Core engine benchmarks (not implemented yet).")
    @OptionGroup var options: CommonBenchOptions
    func run() throws { throw ValidationError("the engine benchmark is not implemented yet") }
}
