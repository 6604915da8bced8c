import RelayDataPlane

/// The kernel data plane: both sockets go to a ``SplicePlane`` (socket → pipe → socket with
/// splice(2), on epoll loops of its own), so no byte of a plaintext session enters user space.
public struct SpliceDataPlane: DataPlane, CustomStringConvertible {
    /// The loops every session of the process shares.
    public let plane: SplicePlane

    /// A data plane over `plane`.
    public init(plane: SplicePlane) {
        self.plane = plane
    }

    /// The process's one splice plane (one loop per CPU), started on first use.
    public static let shared: SplicePlane = {
        do {
            return try SplicePlane()
        } catch {
            fatalError("cannot start the splice data plane: \(error)")
        }
    }()

    /// "splice (2 loops, level-triggered, 256 KiB pipes)", for logs and test figures.
    public var description: String {
        let configuration = self.plane.configuration
        let loops = configuration.loops == 1 ? "1 loop" : "\(configuration.loops) loops"
        return "splice (\(loops), \(configuration.trigger)-triggered, \(configuration.pipeSize >> 10) KiB pipes)"
    }

    public func start(_ first: OwnedSocket, _ second: OwnedSocket, meter: TrafficMeter, limits: PumpLimits)
        -> any PumpRunning
    {
        let pendingForward = first.pending.withLock { $0 }
        let pendingBackward = second.pending.withLock { $0 }
        guard let firstDescriptor = first.take() else {
            second.reset()
            return Finished(outcome: .failed(endpoint: .first, reason: "connection closed"))
        }
        guard let secondDescriptor = second.take() else {
            firstDescriptor.reset()
            return Finished(outcome: .failed(endpoint: .second, reason: "connection closed"))
        }
        let session = self.plane.start(
            first: firstDescriptor, second: secondDescriptor, pendingForward: pendingForward,
            pendingBackward: pendingBackward, meter: meter,
            limits: SpliceLimits(halfCloseTimeout: limits.halfCloseTimeout, idleTimeout: limits.idleTimeout))
        return Running(session: session)
    }

    /// Stops every session on the plane for a handover (``SplicePlane/freeze()``).
    public func freeze() async -> [FrozenSplice] {
        await self.plane.freeze()
    }

    /// Goes on with a session the process before froze (``SplicePlane/resume(_:meter:limits:onEnd:)``).
    public func resume(_ frozen: FrozenSplice, meter: TrafficMeter, limits: PumpLimits) -> any PumpRunning {
        Running(
            session: self.plane.resume(
                frozen, meter: meter,
                limits: SpliceLimits(halfCloseTimeout: limits.halfCloseTimeout, idleTimeout: limits.idleTimeout)))
    }

    private struct Running: PumpRunning {
        let session: SpliceSession

        var spliceID: UInt64? { self.session.id }

        func kill(reason: String) {
            self.session.kill(reason: reason)
        }

        var outcome: PumpOutcome {
            get async { Self.outcome(of: await self.session.outcome) }
        }

        /// Nothing waits while the session runs; its end starts a task for `body` (off the
        /// splice loop's thread).
        func whenEnded(_ body: @escaping @Sendable (PumpOutcome) -> Void) {
            self.session.whenEnded { outcome in
                let outcome = Self.outcome(of: outcome)
                Task { body(outcome) }
            }
        }

        /// The splice outcome in the pump's terms (the side whose socket failed or idled).
        static func outcome(of outcome: SpliceOutcome) -> PumpOutcome {
            switch outcome {
            case .finished: .finished
            case .failed(let side, let reason): .failed(endpoint: side == .first ? .first : .second, reason: reason)
            case .halfCloseTimeout(let idle, _):
                .failed(endpoint: idle == .first ? .first : .second, reason: outcome.reason)
            case .aborted(let reason): .failed(endpoint: .first, reason: reason)
            case .idleTimeout: .failed(endpoint: .first, reason: outcome.reason)
            }
        }
    }

    private struct Finished: PumpRunning {
        let outcome: PumpOutcome
        func kill(reason: String) {}
    }
}
