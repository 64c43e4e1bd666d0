import RampartBackends
import RampartConntrack
import RampartDaemon
import RampartStore

extension BackendChoice {
    /// A daemon set up as `rampartd` sets it up by default: its revocation finds the affected
    /// conntrack entries in an index kept from conntrack events, not by walking the kernel's
    /// table (which costs ~11 ms per walk whatever the namespace holds). A bench daemon without
    /// it would measure a cost no deployed daemon pays. Stop the index after the daemon.
    func benchDaemon(host: String, store: any Store) throws -> (daemon: Daemon, index: ConntrackIndex) {
        let index = try ConntrackIndex.start(namespace: namespace)
        let daemon = Daemon(configuration: .init(host: host, resyncInterval: 3600), store: store, backend: factory,
                            cutter: cutter(index: index), conntrackIndex: index)
        return (daemon, index)
    }
}
