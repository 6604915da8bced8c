import Synchronization

/// A sleep that another task can end early: the reconnect loop's backoff wait, which a
/// reload ends so that a changed relay address or secret is tried at once.
public final class Wakeup: Sendable {
    /// How a ``sleep(for:)`` ended.
    public enum Outcome: Sendable, Equatable {
        /// The whole duration passed.
        case elapsed
        /// ``wake()`` was called during the sleep (or before it, since the last sleep).
        case woken
        /// The sleeping task was cancelled.
        case cancelled
    }

    private enum State {
        /// Nobody sleeps; `pending` if a wake came in meanwhile.
        case idle(pending: Bool)
        /// One sleeper, and the timer that ends its sleep.
        case sleeping(CheckedContinuation<Outcome, Never>, generation: UInt64, timer: Task<Void, Never>?)
    }

    private let state = Mutex<(State, generation: UInt64)>((.idle(pending: false), 0))

    /// A wakeup with nothing pending.
    public init() {}

    /// Ends the current sleep, or the next one at once if none is under way.
    public func wake() {
        self.finish(.woken, generation: nil)
    }

    /// Sleeps for `duration` unless woken or cancelled first. One sleeper at a time.
    public func sleep(for duration: Duration) async -> Outcome {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let generation: UInt64? = self.state.withLock { state in
                    if case .idle(pending: true) = state.0 {
                        state.0 = .idle(pending: false)
                        return nil
                    }
                    state.generation += 1
                    state.0 = .sleeping(continuation, generation: state.generation, timer: nil)
                    return state.generation
                }
                guard let generation else { return continuation.resume(returning: .woken) }
                let timer = Task {
                    guard (try? await Task.sleep(for: duration)) != nil else { return }
                    self.finish(.elapsed, generation: generation)
                }
                self.state.withLock { state in
                    if case .sleeping(let sleeper, generation, nil) = state.0 {
                        state.0 = .sleeping(sleeper, generation: generation, timer: timer)
                    } else {
                        timer.cancel()
                    }
                }
                if Task.isCancelled { self.finish(.cancelled, generation: generation) }
            }
        } onCancel: {
            self.finish(.cancelled, generation: nil)
        }
    }

    /// Resumes the sleeper (of `generation`, if given) with `outcome`; a wake with nobody
    /// asleep is kept for the next sleep.
    private func finish(_ outcome: Outcome, generation wanted: UInt64?) {
        let resumed: (CheckedContinuation<Outcome, Never>, Task<Void, Never>?)? = self.state.withLock { state in
            switch state.0 {
            case .sleeping(let sleeper, let generation, let timer) where wanted == nil || wanted == generation:
                state.0 = .idle(pending: false)
                return (sleeper, timer)
            case .idle where outcome == .woken:
                state.0 = .idle(pending: true)
                return nil
            default:
                return nil
            }
        }
        guard let (sleeper, timer) = resumed else { return }
        timer?.cancel()
        sleeper.resume(returning: outcome)
    }
}
