#include "CRelayTLS.h"

#include <pthread.h>
#include <stddef.h>

// Prototypes of the BoringSSL functions used, as swift-nio-ssl 2.37.6's copy declares them in
// CNIOBoringSSL_ssl.h and CNIOBoringSSL_ex_data.h (with BORINGSSL_PREFIX = CNIOBoringSSL).
typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_session_st SSL_SESSION;
typedef struct crypto_ex_data_st CRYPTO_EX_DATA;
typedef void CRYPTO_EX_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int index, long argl, void *argp);
typedef int CRYPTO_EX_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int index, long argl,
                          void *argp);
typedef int CRYPTO_EX_unused;

#define SSL_SESS_CACHE_CLIENT 0x0001

extern int CNIOBoringSSL_SSL_get_ex_new_index(long argl, void *argp, CRYPTO_EX_unused *unused,
                                              CRYPTO_EX_dup *dup_unused, CRYPTO_EX_free *free_func);
extern int CNIOBoringSSL_SSL_set_ex_data(SSL *ssl, int idx, void *data);
extern void *CNIOBoringSSL_SSL_get_ex_data(const SSL *ssl, int idx);
extern SSL_CTX *CNIOBoringSSL_SSL_get_SSL_CTX(const SSL *ssl);
extern int CNIOBoringSSL_SSL_is_server(const SSL *ssl);
extern int CNIOBoringSSL_SSL_in_init(const SSL *ssl);
extern int CNIOBoringSSL_SSL_CTX_get_session_cache_mode(const SSL_CTX *ctx);
extern int CNIOBoringSSL_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, int mode);
extern void CNIOBoringSSL_SSL_CTX_sess_set_new_cb(SSL_CTX *ctx, int (*new_session_cb)(SSL *, SSL_SESSION *));
extern int CNIOBoringSSL_SSL_set_session(SSL *ssl, SSL_SESSION *session);
extern int CNIOBoringSSL_SSL_session_reused(const SSL *ssl);
extern void CNIOBoringSSL_SSL_SESSION_free(SSL_SESSION *session);
extern int CNIOBoringSSL_SSL_SESSION_is_resumable(const SSL_SESSION *session);
extern int CNIOBoringSSL_SSL_SESSION_should_be_single_use(const SSL_SESSION *session);
extern uint64_t CNIOBoringSSL_SSL_SESSION_get_time(const SSL_SESSION *session);
extern uint32_t CNIOBoringSSL_SSL_SESSION_get_timeout(const SSL_SESSION *session);

static pthread_mutex_t setup_lock = PTHREAD_MUTEX_INITIALIZER;
static int sink_index = -1;
static relay_tls_session_sink_fn sink_fn;
static relay_tls_sink_release_fn release_fn;

static void free_sink(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int index, long argl, void *argp) {
    (void)parent;
    (void)ad;
    (void)index;
    (void)argl;
    (void)argp;
    if (ptr != NULL && release_fn != NULL) {
        release_fn(ptr);
    }
}

int relay_tls_setup(relay_tls_session_sink_fn sink, relay_tls_sink_release_fn release) {
    // The first call wins; every caller passes the same two functions.
    pthread_mutex_lock(&setup_lock);
    if (sink_index < 0) {
        sink_fn = sink;
        release_fn = release;
        sink_index = CNIOBoringSSL_SSL_get_ex_new_index(0, NULL, NULL, NULL, free_sink);
    }
    int ready = sink_index >= 0 ? 1 : 0;
    pthread_mutex_unlock(&setup_lock);
    return ready;
}

// BoringSSL calls this on the connection's thread when a ticket arrives (after the handshake,
// or when a resumed session is renewed). Without a sink the session is left to BoringSSL.
static int new_session(SSL *ssl, SSL_SESSION *session) {
    if (sink_index < 0 || sink_fn == NULL) {
        return 0;
    }
    void *sink = CNIOBoringSSL_SSL_get_ex_data(ssl, sink_index);
    if (sink == NULL) {
        return 0;
    }
    return sink_fn(sink, session);
}

void relay_tls_enable_client_sessions(void *ctx) {
    SSL_CTX *context = ctx;
    int mode = CNIOBoringSSL_SSL_CTX_get_session_cache_mode(context);
    CNIOBoringSSL_SSL_CTX_set_session_cache_mode(context, mode | SSL_SESS_CACHE_CLIENT);
    CNIOBoringSSL_SSL_CTX_sess_set_new_cb(context, new_session);
}

void *relay_tls_ssl_context(const void *ssl) { return CNIOBoringSSL_SSL_get_SSL_CTX(ssl); }

int relay_tls_is_fresh_client(const void *ssl) {
    return CNIOBoringSSL_SSL_is_server(ssl) == 0 && CNIOBoringSSL_SSL_in_init(ssl) != 0 ? 1 : 0;
}

int relay_tls_attach_sink(void *ssl, void *sink) {
    if (sink_index < 0) {
        return 0;
    }
    return CNIOBoringSSL_SSL_set_ex_data(ssl, sink_index, sink) == 1 ? 1 : 0;
}

int relay_tls_set_session(void *ssl, void *session) { return CNIOBoringSSL_SSL_set_session(ssl, session); }

int relay_tls_session_reused(const void *ssl) { return CNIOBoringSSL_SSL_session_reused(ssl) ? 1 : 0; }

void relay_tls_session_free(void *session) { CNIOBoringSSL_SSL_SESSION_free(session); }

int relay_tls_session_is_resumable(const void *session) {
    return CNIOBoringSSL_SSL_SESSION_is_resumable(session) ? 1 : 0;
}

int relay_tls_session_single_use(const void *session) {
    return CNIOBoringSSL_SSL_SESSION_should_be_single_use(session) ? 1 : 0;
}

uint64_t relay_tls_session_time(const void *session) { return CNIOBoringSSL_SSL_SESSION_get_time(session); }

uint32_t relay_tls_session_timeout(const void *session) { return CNIOBoringSSL_SSL_SESSION_get_timeout(session); }
