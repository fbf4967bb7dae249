/* hubbub's compiled upgrade path: the common WebSocket opening handshake
 * (RFC 6455 4.1 and 4.2) read, checked and answered in one call, without
 * httptools' per-header callbacks, websockets' request objects or Python
 * regular expressions (see hubbub/transport/handshake.py for the contract
 * and the Python path it stands in for, and docs/benchmarks.md).
 *
 *     upgrade(data, subprotocols, compression, max_head, max_headers, date)
 *         -> None | (path, query, headers, subprotocol, head, consumed)
 *
 * ``data`` is what the first read of a new connection brought. The call
 * answers None unless ``data`` starts with one complete request head that is
 * a WebSocket handshake in the strict common form below; the caller then
 * parses it the general way (httptools, then websockets' checks), which
 * accepts or refuses it with its reason. So this path accepts only what the
 * general path accepts, with the same answer, and never refuses anything.
 *
 * The common form, byte by byte (RFC 9112 and RFC 6455 4.1):
 *
 *  - ``GET SP request-target SP HTTP/1.1 CRLF``: the target in origin form
 *    (``/`` first), made of RFC 3986 characters only (no ``#``);
 *  - header lines ``name ":" OWS value CRLF``: the name a token, the value
 *    visible ASCII, spaces and tabs, with no trailing space or tab (which
 *    httptools would keep in the value); no line folding, no bare LF;
 *  - then an empty line; the whole head at most ``max_head`` bytes and at
 *    most ``max_headers`` header lines;
 *  - no ``Content-Length`` and no ``Transfer-Encoding`` (a body);
 *  - exactly one each of ``Host`` (RFC 9112 3.2), ``Connection`` (``Upgrade``,
 *    ``keep-alive, Upgrade`` or ``Upgrade, keep-alive``, any case),
 *    ``Upgrade`` (``websocket``, any case), ``Sec-WebSocket-Key`` (the base64
 *    form of 16 bytes: 22 digits and ``==``) and ``Sec-WebSocket-Version``
 *    (``13``); at most one ``Sec-WebSocket-Protocol``, a list of tokens; no
 *    ``Sec-WebSocket-Extensions`` while ``compression`` is on (websockets
 *    negotiates permessage-deflate).
 *
 * Answer: ``path`` and ``query`` (the target split at its first ``?``),
 * ``headers`` (names lower-cased; a repeated header's values joined with
 * ", ", as hubbub's HTTP layer reads them), the subprotocol chosen (the first
 * of ``subprotocols``, a sequence of the server's in preference order, that
 * the client offered; None if none), ``head``: the 101 answer (RFC 6455 4.2.2 step 5:
 * ``Sec-WebSocket-Accept`` is base64(SHA-1(key + GUID))) with ``date`` as its
 * Date, and ``consumed``: the length of the request head (what follows it
 * is the first WebSocket bytes).
 *
 * SHA-1 is FIPS 180-4's, written out here: the key is 60 bytes with the
 * GUID, two blocks.
 */
#define PY_SSIZE_T_CLEAN
/* The stable ABI of 3.11 (Py_LIMITED_API is set by the build), as _speedups. */
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* -- SHA-1 (FIPS 180-4, section 6.1) ---------------------------------------- */

#define ROTL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

static void
sha1_block(uint32_t h[5], const unsigned char *p)
{
    uint32_t w[80];
    for (int t = 0; t < 16; t++)
        w[t] = ((uint32_t)p[4 * t] << 24) | ((uint32_t)p[4 * t + 1] << 16) |
               ((uint32_t)p[4 * t + 2] << 8) | (uint32_t)p[4 * t + 3];
    for (int t = 16; t < 80; t++)
        w[t] = ROTL(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int t = 0; t < 80; t++) {
        uint32_t f, k;
        if (t < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        }
        else if (t < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        }
        else if (t < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        }
        else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t tmp = ROTL(a, 5) + f + e + k + w[t];
        e = d;
        d = c;
        c = ROTL(b, 30);
        b = a;
        a = tmp;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

/* SHA-1 of a message of at most 119 bytes (two blocks with the padding). */
static void
sha1_short(const unsigned char *msg, size_t len, unsigned char out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    unsigned char buf[128];
    size_t total = len + 9 <= 64 ? 64 : 128;
    memset(buf, 0, sizeof(buf));
    memcpy(buf, msg, len);
    buf[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++)
        buf[total - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64)
        sha1_block(h, buf + off);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

static const char B64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* 20 bytes -> 28 base64 characters (the last one "="). */
static void
base64_20(const unsigned char in[20], char out[28])
{
    int o = 0;
    for (int i = 0; i < 18; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = B64[v & 63];
    }
    uint32_t v = ((uint32_t)in[18] << 16) | ((uint32_t)in[19] << 8);
    out[o++] = B64[(v >> 18) & 63];
    out[o++] = B64[(v >> 12) & 63];
    out[o++] = B64[(v >> 6) & 63];
    out[o++] = '=';
}

/* RFC 6455 1.3: the GUID appended to Sec-WebSocket-Key. */
static const char GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* -- character classes ------------------------------------------------------ */

/* Character classes, one table lookup each (filled by init_tables). */
#define C_TCHAR 1  /* RFC 9110 5.6.2 tchar */
#define C_TARGET 2 /* RFC 3986: unreserved, sub-delims, ":", "@", "/", "?", "%" (no "#") */
#define C_VALUE 4  /* a header value's byte in the common form: VCHAR, SP, HTAB */
#define C_B64 8    /* a base64 digit */
static unsigned char CLASS[256];

static void
init_tables(void)
{
    for (int c = 0; c < 256; c++) {
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        unsigned char k = 0;
        if (alnum || (c && strchr("!#$%&'*+-.^_`|~", c)))
            k |= C_TCHAR;
        if (alnum || (c && strchr("-._~!$&'()*+,;=:@/?%", c)))
            k |= C_TARGET;
        if ((c >= 0x20 && c < 0x7F) || c == '\t')
            k |= C_VALUE;
        if (alnum || c == '+' || c == '/')
            k |= C_B64;
        CLASS[c] = k;
    }
}

#define is_tchar(c) (CLASS[(unsigned char)(c)] & C_TCHAR)
#define is_target_char(c) (CLASS[(unsigned char)(c)] & C_TARGET)
#define is_value_char(c) (CLASS[(unsigned char)(c)] & C_VALUE)
#define is_b64_digit(c) (CLASS[(unsigned char)(c)] & C_B64)
#define is_ows(c) ((c) == ' ' || (c) == '\t')

/* Equal to ``lit`` (lower-case ASCII), ignoring ASCII case. */
static int
eq_nocase(const char *s, Py_ssize_t n, const char *lit)
{
    Py_ssize_t m = (Py_ssize_t)strlen(lit);
    if (n != m)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}

/* -- the headers that decide ------------------------------------------------- */

enum {
    H_HOST,
    H_CONNECTION,
    H_UPGRADE,
    H_KEY,
    H_VERSION,
    H_PROTOCOL,
    H_EXTENSIONS,
    H_BODY, /* content-length, transfer-encoding */
    H_OTHER
};

static const char *const KNOWN[] = {
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
};

static int
classify(const char *lname, Py_ssize_t n)
{
    for (int i = 0; i < (int)(sizeof(KNOWN) / sizeof(KNOWN[0])); i++)
        if ((Py_ssize_t)strlen(KNOWN[i]) == n && memcmp(lname, KNOWN[i], (size_t)n) == 0)
            return i;
    if ((n == 14 && memcmp(lname, "content-length", 14) == 0) ||
        (n == 17 && memcmp(lname, "transfer-encoding", 17) == 0))
        return H_BODY;
    return H_OTHER;
}

typedef struct {
    const char *value;
    Py_ssize_t len;
    int count;
} Seen;

/* Longest header name handled here (a longer one: the general path). */
#define NAME_MAX_LEN 128

/* Add ``name: value`` to ``headers`` (joined with ", " to an earlier one).
 * 0 on success, -1 with an exception set. */
static int
add_header(PyObject *headers, const char *lname, Py_ssize_t nlen, const char *value,
           Py_ssize_t vlen)
{
    PyObject *key = PyUnicode_FromStringAndSize(lname, nlen);
    if (key == NULL)
        return -1;
    PyObject *val = PyUnicode_FromStringAndSize(value, vlen);
    if (val == NULL) {
        Py_DECREF(key);
        return -1;
    }
    PyObject *old = PyDict_GetItemWithError(headers, key); /* borrowed */
    if (old == NULL && PyErr_Occurred()) {
        Py_DECREF(key);
        Py_DECREF(val);
        return -1;
    }
    if (old != NULL) {
        PyObject *joined = PyUnicode_FromFormat("%U, %U", old, val);
        Py_DECREF(val);
        if (joined == NULL) {
            Py_DECREF(key);
            return -1;
        }
        val = joined;
    }
    int rc = PyDict_SetItem(headers, key, val);
    Py_DECREF(key);
    Py_DECREF(val);
    return rc;
}

/* Parse the header lines from ``p`` up to and including the empty line that
 * ends the head at ``end`` (the CRLF CRLF is at end - 4). 1: parsed into
 * ``headers`` and ``seen``; 0: not the common form; -1: an exception. */
static int
parse_headers(const char *p, const char *end, Py_ssize_t max_headers, PyObject *headers,
              Seen seen[H_OTHER])
{
    char lname[NAME_MAX_LEN];
    Py_ssize_t count = 0;
    for (;;) {
        if (p + 2 <= end && p[0] == '\r' && p[1] == '\n')
            return p + 2 == end; /* the empty line must end the head */
        if (++count > max_headers)
            return 0;
        const char *name = p;
        while (p < end && is_tchar((unsigned char)*p))
            p++;
        Py_ssize_t nlen = p - name;
        if (nlen == 0 || nlen > NAME_MAX_LEN || p >= end || *p != ':')
            return 0;
        for (Py_ssize_t i = 0; i < nlen; i++) {
            unsigned char c = (unsigned char)name[i];
            lname[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        p++; /* ':' */
        while (p < end && is_ows((unsigned char)*p))
            p++;
        const char *value = p;
        while (p < end && is_value_char((unsigned char)*p))
            p++;
        Py_ssize_t vlen = p - value;
        if (p + 1 >= end || p[0] != '\r' || p[1] != '\n')
            return 0; /* a control character, obs-text or a bare LF */
        if (vlen > 0 && is_ows((unsigned char)value[vlen - 1]))
            return 0; /* trailing whitespace: httptools keeps it */
        p += 2;
        int kind = classify(lname, nlen);
        if (kind == H_BODY)
            return 0;
        if (kind != H_OTHER) {
            seen[kind].value = value;
            seen[kind].len = vlen;
            seen[kind].count++;
        }
        if (add_header(headers, lname, nlen, value, vlen) < 0)
            return -1;
    }
}

/* RFC 9110 token list: token *(OWS "," OWS token), no empty items. */
static int
token_list(const char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (;;) {
        Py_ssize_t start = i;
        while (i < n && is_tchar((unsigned char)s[i]))
            i++;
        if (i == start)
            return 0;
        while (i < n && is_ows((unsigned char)s[i]))
            i++;
        if (i == n)
            return 1;
        if (s[i] != ',')
            return 0;
        i++;
        while (i < n && is_ows((unsigned char)s[i]))
            i++;
    }
}

/* Is ``name`` one of the tokens of the list ``s`` (checked by token_list)? */
static int
offered(const char *s, Py_ssize_t n, const char *name, Py_ssize_t nlen)
{
    Py_ssize_t i = 0;
    while (i < n) {
        Py_ssize_t start = i;
        while (i < n && is_tchar((unsigned char)s[i]))
            i++;
        if (i - start == nlen && memcmp(s + start, name, (size_t)nlen) == 0)
            return 1;
        while (i < n && (is_ows((unsigned char)s[i]) || s[i] == ','))
            i++;
    }
    return 0;
}

/* The checks of RFC 6455 4.2.1 on the headers seen: 1 if all pass in the
 * common form, else 0. */
static int
common_handshake(Seen seen[H_OTHER], int compression)
{
    for (int h = H_HOST; h <= H_VERSION; h++)
        if (seen[h].count != 1)
            return 0;
    if (seen[H_PROTOCOL].count > 1)
        return 0;
    if (compression && seen[H_EXTENSIONS].count)
        return 0;
    Seen *c = &seen[H_CONNECTION];
    if (!eq_nocase(c->value, c->len, "upgrade") &&
        !eq_nocase(c->value, c->len, "keep-alive, upgrade") &&
        !eq_nocase(c->value, c->len, "upgrade, keep-alive"))
        return 0;
    if (!eq_nocase(seen[H_UPGRADE].value, seen[H_UPGRADE].len, "websocket"))
        return 0;
    Seen *k = &seen[H_KEY];
    if (k->len != 24 || k->value[22] != '=' || k->value[23] != '=')
        return 0;
    for (int i = 0; i < 22; i++)
        if (!is_b64_digit((unsigned char)k->value[i]))
            return 0;
    if (seen[H_VERSION].len != 2 || memcmp(seen[H_VERSION].value, "13", 2) != 0)
        return 0;
    if (seen[H_PROTOCOL].count && !token_list(seen[H_PROTOCOL].value, seen[H_PROTOCOL].len))
        return 0;
    return 1;
}

/* The server's first subprotocol the client offered (a new reference to it),
 * Py_None if none; NULL with an exception set. ``subprotocols`` is a
 * sequence of str. */
static PyObject *
choose_subprotocol(Seen *proto, PyObject *subprotocols)
{
    if (proto->count == 0)
        Py_RETURN_NONE;
    Py_ssize_t n = PySequence_Size(subprotocols);
    if (n < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PySequence_GetItem(subprotocols, i);
        if (name == NULL)
            return NULL;
        Py_ssize_t nlen;
        const char *s = PyUnicode_AsUTF8AndSize(name, &nlen);
        if (s == NULL) {
            Py_DECREF(name);
            return NULL;
        }
        if (offered(proto->value, proto->len, s, nlen))
            return name;
        Py_DECREF(name);
    }
    Py_RETURN_NONE;
}

/* Sec-WebSocket-Accept (RFC 6455 4.2.2 step 5.4): base64(SHA-1(key + GUID)). */
static void
accept_of(const char key[24], char accept[28])
{
    unsigned char msg[24 + sizeof(GUID) - 1];
    unsigned char digest[20];
    memcpy(msg, key, 24);
    memcpy(msg + 24, GUID, sizeof(GUID) - 1);
    sha1_short(msg, sizeof(msg), digest);
    base64_20(digest, accept);
}

static char *
put(char *o, const char *s, size_t n)
{
    memcpy(o, s, n);
    return o + n;
}

#define LIT(o, s) put((o), (s), sizeof(s) - 1)

/* RFC 6455 4.2.2 step 5: the 101 answer, as bytes. */
static PyObject *
switching_protocols(const char *key, PyObject *date, PyObject *subprotocol)
{
    static const char A[] = "HTTP/1.1 101 Switching Protocols\r\nDate: ";
    static const char B[] = "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";
    static const char C[] = "\r\nSec-WebSocket-Protocol: ";
    Py_ssize_t dlen, slen = 0;
    const char *d = PyUnicode_AsUTF8AndSize(date, &dlen);
    if (d == NULL)
        return NULL;
    const char *sp = NULL;
    if (subprotocol != Py_None) {
        sp = PyUnicode_AsUTF8AndSize(subprotocol, &slen);
        if (sp == NULL)
            return NULL;
    }
    Py_ssize_t n = (Py_ssize_t)(sizeof(A) - 1 + sizeof(B) - 1 + 28 + 4) + dlen +
                   (sp ? (Py_ssize_t)(sizeof(C) - 1) + slen : 0);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL)
        return NULL;
    char *o = PyBytes_AsString(out);
    if (o == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    o = LIT(o, A);
    o = put(o, d, (size_t)dlen);
    o = LIT(o, B);
    accept_of(key, o);
    o += 28;
    if (sp) {
        o = LIT(o, C);
        o = put(o, sp, (size_t)slen);
    }
    LIT(o, "\r\n\r\n");
    return out;
}

/* -- the request head -------------------------------------------------------- */

static const char *
find_head_end(const char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i + 3 < n; i++)
        if (s[i] == '\r' && s[i + 1] == '\n' && s[i + 2] == '\r' && s[i + 3] == '\n')
            return s + i + 4;
    return NULL;
}

/* The request line: 1 with the target's bounds, 0 if not the common form. */
static int
request_line(const char *s, const char *end, const char **target, Py_ssize_t *tlen,
             const char **next)
{
    static const char VERSION[] = " HTTP/1.1\r\n";
    if (end - s < 5 || memcmp(s, "GET /", 5) != 0)
        return 0;
    const char *p = s + 4;
    const char *t = p;
    while (p < end && is_target_char((unsigned char)*p))
        p++;
    if (end - p < (Py_ssize_t)(sizeof(VERSION) - 1) || memcmp(p, VERSION, sizeof(VERSION) - 1))
        return 0;
    *target = t;
    *tlen = p - t;
    *next = p + sizeof(VERSION) - 1;
    return 1;
}

static PyObject *
answer(const char *target, Py_ssize_t tlen, PyObject *headers, PyObject *subprotocol,
       PyObject *head, Py_ssize_t consumed)
{
    const char *q = memchr(target, '?', (size_t)tlen);
    Py_ssize_t plen = q ? q - target : tlen;
    PyObject *path = PyUnicode_FromStringAndSize(target, plen);
    if (path == NULL)
        return NULL;
    PyObject *query = q ? PyUnicode_FromStringAndSize(q + 1, tlen - plen - 1)
                        : PyUnicode_FromStringAndSize("", 0);
    if (query == NULL) {
        Py_DECREF(path);
        return NULL;
    }
    PyObject *n = PyLong_FromSsize_t(consumed);
    if (n == NULL) {
        Py_DECREF(path);
        Py_DECREF(query);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(6, path, query, headers, subprotocol, head, n);
    Py_DECREF(path);
    Py_DECREF(query);
    Py_DECREF(n);
    return out;
}

static PyObject *
upgrade(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "upgrade(data, subprotocols, compression, max_head, max_headers, date)");
        return NULL;
    }
    PyObject *data = args[0], *subprotocols = args[1], *date = args[5];
    if (!PyBytes_Check(data) || !PyUnicode_Check(date)) {
        PyErr_SetString(PyExc_TypeError, "upgrade: data must be bytes, date a str");
        return NULL;
    }
    int compression = PyObject_IsTrue(args[2]);
    if (compression < 0)
        return NULL;
    Py_ssize_t max_head = PyLong_AsSsize_t(args[3]);
    if (max_head == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t max_headers = PyLong_AsSsize_t(args[4]);
    if (max_headers == -1 && PyErr_Occurred())
        return NULL;

    char *buf;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(data, &buf, &size) < 0)
        return NULL;
    if (size > max_head)
        size = max_head;
    const char *end = find_head_end(buf, size);
    const char *target, *p;
    Py_ssize_t tlen;
    if (end == NULL || !request_line(buf, end, &target, &tlen, &p))
        Py_RETURN_NONE;

    PyObject *headers = PyDict_New();
    if (headers == NULL)
        return NULL;
    Seen seen[H_OTHER];
    memset(seen, 0, sizeof(seen));
    int rc = parse_headers(p, end, max_headers, headers, seen);
    if (rc <= 0 || !common_handshake(seen, compression)) {
        Py_DECREF(headers);
        if (rc < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *subprotocol = choose_subprotocol(&seen[H_PROTOCOL], subprotocols);
    if (subprotocol == NULL) {
        Py_DECREF(headers);
        return NULL;
    }
    PyObject *head = switching_protocols(seen[H_KEY].value, date, subprotocol);
    PyObject *out = NULL;
    if (head != NULL) {
        out = answer(target, tlen, headers, subprotocol, head, end - buf);
        Py_DECREF(head);
    }
    Py_DECREF(subprotocol);
    Py_DECREF(headers);
    return out;
}

static PyObject *
accept_key(PyObject *module, PyObject *key)
{
    /* Sec-WebSocket-Accept for a key of 24 ASCII characters (for tests). */
    Py_ssize_t n;
    const char *s = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, &n) : NULL;
    if (s == NULL || n != 24) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "accept_key: a key of 24 characters");
        return NULL;
    }
    char accept[28];
    accept_of(s, accept);
    return PyUnicode_FromStringAndSize(accept, 28);
}

static PyMethodDef methods[] = {
    {"upgrade", (PyCFunction)(void (*)(void))upgrade, METH_FASTCALL,
     "The common WebSocket handshake, checked and answered (see the module source)."},
    {"accept_key", accept_key, METH_O, "Sec-WebSocket-Accept of a 24-character key."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_handshake", "hubbub's compiled upgrade path.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__handshake(void)
{
    init_tables();
    return PyModule_Create(&module);
}
