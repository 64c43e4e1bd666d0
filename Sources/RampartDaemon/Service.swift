import ServiceLifecycle

/// The reconciler as a swift-service-lifecycle `Service`, run beside the API server in one
/// `ServiceGroup` (rampartd). `run()` owns the reconciler's lifetime: it starts the thread and
/// returns when the thread has ended; graceful shutdown (SIGTERM) or cancellation asks it to
/// stop after the pass in progress. The kernel keeps its rules.
public struct ReconcilerService: Service {
    public let daemon: Daemon

    public init(daemon: Daemon) {
        self.daemon = daemon
    }

    public func run() async throws {
        daemon.start()
        // The thread blocks in netlink and iptables calls; this task only waits for its end
        // (a continuation, no thread of the cooperative pool held).
        await withTaskCancellationOrGracefulShutdownHandler {
            await daemon.stopped()
        } onCancelOrGracefulShutdown: {
            daemon.requestStop()
        }
    }
}
