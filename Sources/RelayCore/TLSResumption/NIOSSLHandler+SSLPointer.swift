import NIOSSL

// UNSUPPORTED ACCESS, isolated here: swift-nio-ssl 2.37.6 has no session API and no public way
// to the `SSL *` of a handler, so this reads it by reflection: NIOSSLHandler's private
// `connection` (an internal `SSLConnection`) and that object's private `ssl`. Mirror reads
// stored properties by name and type; if a later swift-nio-ssl renames or retypes either
// field, this returns nil and resumption turns itself off (every handshake is then a full one)
// instead of touching the wrong memory. `NIOSSLInternalsTests` fails loudly when that happens.
// Nothing else in relay reaches inside swift-nio-ssl.

/// What relay reads from swift-nio-ssl's private state, by name (see the comment above).
enum NIOSSLInternals {
    /// The stored property of `NIOSSLHandler` that holds the connection.
    static let connectionField = "connection"
    /// The type of that property.
    static let connectionType = "SSLConnection"
    /// The stored property of `SSLConnection` that holds BoringSSL's `SSL *`.
    static let sslField = "ssl"

    /// The `SSL *` behind `handler`, or nil if swift-nio-ssl's layout is not the one expected.
    /// Valid as long as `handler` lives (the connection frees it in its deinit).
    static func sslPointer(of handler: NIOSSLHandler) -> OpaquePointer? {
        var mirror: Mirror? = Mirror(reflecting: handler)
        while let current = mirror {
            if let connection = current.children.first(where: { $0.label == connectionField })?.value {
                guard String(describing: type(of: connection)) == connectionType else { return nil }
                let field = Mirror(reflecting: connection).children.first { $0.label == sslField }
                return field?.value as? OpaquePointer
            }
            mirror = current.superclassMirror
        }
        return nil
    }
}
