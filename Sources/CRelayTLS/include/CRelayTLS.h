// TLS 1.3 session resumption on the agent's client connections: the few BoringSSL calls that
// swift-nio-ssl does not expose (it has no session API). BoringSSL is the copy swift-nio-ssl
// links (symbols prefixed `CNIOBoringSSL_`); its headers are not a product of that package, so
// shim.c declares the prototypes it uses, and Swift sees only these `relay_tls_*` functions.
// Pointers are `void *` here: an `SSL *`, an `SSL_CTX *` or an `SSL_SESSION *` as named.
#ifndef CRELAYTLS_H
#define CRELAYTLS_H

#include <stdint.h>

/// Receives a new resumable session (a ticket) for the connection whose sink is `sink`.
/// Returns 1 if it keeps the session (it then owns one reference), 0 if not.
typedef int (*relay_tls_session_sink_fn)(void *sink, void *session);
/// Releases a sink attached with `relay_tls_attach_sink` (called when the `SSL` is freed).
typedef void (*relay_tls_sink_release_fn)(void *sink);

/// Sets the two callbacks once per process. Returns 1, or 0 if no ex_data index was free.
int relay_tls_setup(relay_tls_session_sink_fn sink, relay_tls_sink_release_fn release);

/// Turns on client session caching on `ctx` (an `SSL_CTX *` not yet used by any handshake)
/// and routes its new sessions to the sink attached to each connection.
void relay_tls_enable_client_sessions(void *ctx);

/// The `SSL_CTX *` of `ssl`.
void *relay_tls_ssl_context(const void *ssl);
/// 1 if `ssl` is a client whose handshake has not finished, else 0.
int relay_tls_is_fresh_client(const void *ssl);
/// Attaches `sink` (one reference owned by `ssl` from now on) to receive `ssl`'s tickets.
/// Returns 1, or 0 (then the caller still owns the reference).
int relay_tls_attach_sink(void *ssl, void *sink);
/// Offers `session` for resumption on `ssl` before its handshake starts. Returns 1 or 0.
int relay_tls_set_session(void *ssl, void *session);
/// 1 if the finished handshake of `ssl` resumed a session, else 0.
int relay_tls_session_reused(const void *ssl);

/// Releases one reference to `session`.
void relay_tls_session_free(void *session);
/// 1 if `session` can be offered for resumption (complete, with a ticket), else 0.
int relay_tls_session_is_resumable(const void *session);
/// 1 if `session` must be offered at most once (TLS 1.3 tickets), else 0.
int relay_tls_session_single_use(const void *session);
/// Seconds from when the ticket was issued (time) until it expires (timeout).
uint64_t relay_tls_session_time(const void *session);
uint32_t relay_tls_session_timeout(const void *session);

#endif
