/* hubbub's compiled fan-out: one encoded frame written to many WebSocket
 * connections, and the end-of-tick write of what was queued (see
 * hubbub/transport/fanout.py for the contract, the policy and the
 * pure-Python fallback, and docs/benchmarks.md "Steady load: the compiled
 * path" for why and what it measures).
 *
 *     fanout(frame, items, conns, dirty, direct) -> (n, slow, dirtied)
 *     flush(dirty) -> rest
 *     set_transport_type(cls) -> the previous one
 *     set_connection_type(cls) -> the previous one
 *
 * A *plain* connection is a WebSocketConnection whose bytes may go to its
 * socket as they are: ``sockfd >= 0`` (plain TCP, no TLS, no
 * permessage-deflate). Everything else (``sockfd`` < 0 or missing: TLS,
 * compression, a session of another carriage) is left to Python. Its bytes
 * are sent directly only if its transport is exactly of the type given to
 * set_transport_type (uvloop's TCPTransport, whose closing and buffer rules
 * the invariant below is about): a transport of any other type (a wrapper
 * that counts or changes what it writes, another loop's) gets every byte
 * through its own write().
 *
 * fanout: ``items`` is an iterable of connections, or (with ``conns``, a
 * dict) of keys looked up in ``conns`` (missing keys are skipped); a list, a
 * tuple or a dict (its keys) is walked without an iterator. For each
 * connection found, ``n`` is counted and:
 *
 *  - not plain: it goes to ``slow`` (the caller calls its
 *    ``send_frame_bytes``);
 *  - plain, ``direct`` true, nothing of it queued (``out is None``), its
 *    transport not closing (``is_closing()`` false) and its write buffer
 *    empty (``get_write_buffer_size() == 0``, libuv's queue included, or
 *    known to be: ``tx_empty``, below): the
 *    frame is sent with send(2) MSG_DONTWAIT | MSG_NOSIGNAL on that fd. What
 *    the socket did not take (part of the frame, or all of it on EAGAIN or
 *    an error) is queued as below;
 *  - otherwise the frame is queued: exactly what
 *    ``WebSocketConnection.write`` does (``out`` goes from None to the
 *    bytes, from bytes to a list of both, or the list grows), and a
 *    connection whose ``out`` was None is appended to ``dirty`` (the
 *    endpoint's list for the end of the tick; ``dirtied`` is then true and
 *    the caller makes sure the flush is scheduled, as ``mark_dirty`` does).
 *
 * flush: for each connection of ``dirty`` (the end of the tick), a plain one
 * with bytes queued, a transport that is not closing and an empty write
 * buffer gets ``out`` sent with one send(2) and ``out`` set to None; if the
 * socket took only part of it, ``out`` becomes the rest. Every connection
 * that still has something to do (not plain, transport closing or busy,
 * part or all of its bytes not taken) is returned in ``rest``: the caller
 * calls its ``flush_out``, which hands the bytes to the transport with the
 * usual backpressure (pause_writing at half of max_send_buffer, the 1013
 * drop past it) and lets the transport see any socket error.
 *
 * Order: a connection's bytes never reorder. A send(2) happens only when
 * nothing of that connection waits anywhere (its ``out`` for the direct
 * write, the transport's buffer for both), and the bytes queued after it go
 * through ``out`` and the transport, behind it.
 *
 * Invariant (the fd is this connection's socket): uvloop closes a
 * transport's socket at once when it closes it (a read error, an abort:
 * libuv closes the fd in uv_close) but calls connection_lost, which takes the
 * connection out of the broadcast set, only on a later loop iteration. In
 * between, the fd number may already belong to a new connection accepted
 * meanwhile. A closing transport is never written to directly: its
 * is_closing() turns true before the fd is closed.
 *
 * Known empty (``tx_empty``, a slot of WebSocketConnection): True only while
 * the transport's write buffer is known to hold nothing. WebSocketConnection
 * sets it False before each byte it hands to its transport (flush_out is its
 * one transport write: tests/transport/test_tx_empty.py keeps it so); this
 * file sets it True when get_write_buffer_size() answered 0, and then asks
 * no more until Python writes again (a transport never fills by itself). An
 * unset or False flag means: ask. Only connections of the type given to
 * set_connection_type have the flag read; any other type is always asked.
 *
 * Attribute access: on an instance of exactly the type given to
 * set_connection_type (WebSocketConnection), ``sockfd``, ``out``,
 * ``transport`` and ``tx_empty`` are read and written in their slots
 * directly (the offsets its ``__slots__`` members give, checked once: plain
 * object slots, generic attribute access); any other object goes through
 * getattr/setattr. is_closing and get_write_buffer_size of the direct
 * transport type are called unbound (no lookup, no bound method) when that
 * type's instances have no ``__dict__`` (uvloop's: nothing can shadow them).
 *
 * Nothing here calls back into Python except is_closing and
 * get_write_buffer_size (C methods of uvloop's transport) and the
 * dict/attribute reads and writes (``out`` is a slot), so no connection can
 * change state in the middle of a loop.
 */
#define PY_SSIZE_T_CLEAN
/* The stable ABI of 3.11 (Py_LIMITED_API is set by the build): one wheel
 * serves every CPython from 3.11 on. */
#include <Python.h>
#include <structmember.h> /* PyMemberDef, T_OBJECT_EX, READONLY: stable ABI */

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

static PyObject *str_sockfd;
static PyObject *str_out;
static PyObject *str_transport;
static PyObject *str_get_write_buffer_size;
static PyObject *str_is_closing;
static PyObject *str_tx_empty;
/* The only transport type written to directly (NULL: none), and its two
 * methods to call unbound (NULL: look them up on each transport). */
static PyObject *direct_type;
static PyObject *meth_is_closing;
static PyObject *meth_get_write_buffer_size;
/* The connection type whose slots are read directly (NULL: none), and where. */
static PyObject *conn_type;
static Py_ssize_t off_sockfd, off_out, off_transport, off_tx_empty;

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* getattr(conn, name) (a new reference), from the slot at ``off`` if ``fast``. */
static PyObject *
get_attr(PyObject *conn, int fast, Py_ssize_t off, PyObject *name)
{
    if (!fast)
        return PyObject_GetAttr(conn, name);
    PyObject *value = SLOT(conn, off);
    if (value == NULL) {
        PyErr_SetObject(PyExc_AttributeError, name);
        return NULL;
    }
    Py_INCREF(value);
    return value;
}

/* setattr(conn, name, value), into the slot at ``off`` if ``fast``. 0 or -1. */
static int
set_attr(PyObject *conn, int fast, Py_ssize_t off, PyObject *name, PyObject *value)
{
    if (!fast)
        return PyObject_SetAttr(conn, name, value);
    PyObject *old = SLOT(conn, off);
    Py_INCREF(value);
    SLOT(conn, off) = value;
    Py_XDECREF(old); /* bytes, a list of bytes or None: no Python code runs */
    return 0;
}

/* transport.<name>() of a transport of the direct type. */
static PyObject *
call_method(PyObject *transport, PyObject *unbound, PyObject *name)
{
    if (unbound != NULL)
        return PyObject_CallFunctionObjArgs(unbound, transport, NULL);
    return PyObject_CallMethodObjArgs(transport, name, NULL);
}

/* The socket of a plain connection; -1 if it is not one, -2 on a Python error. */
static long
plain_fd(PyObject *conn, int fast)
{
    PyObject *obj;
    if (fast) {
        obj = SLOT(conn, off_sockfd);
        if (obj == NULL)
            return -1;
        Py_INCREF(obj);
    }
    else
        obj = PyObject_GetAttr(conn, str_sockfd);
    if (obj == NULL) {
        /* Not a WebSocketConnection (a session of another carriage): the
         * Python path knows how to send to it. */
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -2;
        PyErr_Clear();
        return -1;
    }
    long fd = PyLong_AsLong(obj);
    Py_DECREF(obj);
    if (fd == -1 && PyErr_Occurred())
        return -2;
    return fd < 0 ? -1 : fd;
}

/* 1: the transport is open and nothing waits in it, 0: not, -1: a Python error. */
static int
transport_idle(PyObject *conn, int fast)
{
    PyObject *transport = get_attr(conn, fast, off_transport, str_transport);
    if (transport == NULL)
        return -1;
    if ((PyObject *)Py_TYPE(transport) != direct_type) {
        Py_DECREF(transport);
        return 0;
    }
    PyObject *obj = call_method(transport, meth_is_closing, str_is_closing);
    if (obj == NULL) {
        Py_DECREF(transport);
        return -1;
    }
    int closing = PyObject_IsTrue(obj);
    Py_DECREF(obj);
    if (closing != 0) {
        Py_DECREF(transport);
        return closing < 0 ? -1 : 0;
    }
    if (fast && SLOT(conn, off_tx_empty) == Py_True) {
        Py_DECREF(transport); /* known empty: nothing was written since it was */
        return 1;
    }
    obj = call_method(transport, meth_get_write_buffer_size, str_get_write_buffer_size);
    Py_DECREF(transport);
    if (obj == NULL)
        return -1;
    Py_ssize_t buffered = PyLong_AsSsize_t(obj);
    Py_DECREF(obj);
    if (buffered == -1 && PyErr_Occurred())
        return -1;
    if (buffered != 0)
        return 0;
    if (fast)
        set_attr(conn, fast, off_tx_empty, str_tx_empty, Py_True);
    return 1;
}

/* Bytes the socket took (0 on EAGAIN or an error: the transport finds out
 * about an error on its own write). */
static Py_ssize_t
send_some(long fd, const char *buf, Py_ssize_t len)
{
    ssize_t sent;
    do {
        sent = send((int)fd, buf, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent < 0 ? 0 : (Py_ssize_t)sent;
}

/* WebSocketConnection.write(data) for a plain connection, with ``dirty`` as
 * the endpoint's mark_dirty. 0 or -1 (a Python error). */
static int
queue(PyObject *conn, int fast, PyObject *out, PyObject *data, PyObject *dirty, int *dirtied)
{
    if (out == Py_None) {
        if (set_attr(conn, fast, off_out, str_out, data) < 0)
            return -1;
        *dirtied = 1;
        return PyList_Append(dirty, conn);
    }
    if (PyList_Check(out))
        return PyList_Append(out, data);
    PyObject *pair = PyList_New(2);
    if (pair == NULL)
        return -1;
    Py_INCREF(out);
    PyList_SetItem(pair, 0, out);
    Py_INCREF(data);
    PyList_SetItem(pair, 1, data);
    int rc = set_attr(conn, fast, off_out, str_out, pair);
    Py_DECREF(pair);
    return rc;
}

/* One plain connection of a fan-out: write directly or queue. 0 or -1. */
static int
deliver(PyObject *conn, int fast, long fd, PyObject *frame, const char *buf, Py_ssize_t len,
        int direct, PyObject *dirty, int *dirtied)
{
    PyObject *out = get_attr(conn, fast, off_out, str_out);
    if (out == NULL)
        return -1;
    int rc = 0;
    Py_ssize_t sent = 0;
    if (direct && out == Py_None && len > 0) {
        rc = transport_idle(conn, fast);
        if (rc > 0)
            sent = send_some(fd, buf, len);
    }
    if (rc >= 0 && sent < len) {
        if (sent == 0) {
            rc = queue(conn, fast, out, frame, dirty, dirtied);
        }
        else {
            PyObject *rest = PyBytes_FromStringAndSize(buf + sent, len - sent);
            rc = rest == NULL ? -1 : queue(conn, fast, out, rest, dirty, dirtied);
            Py_XDECREF(rest);
        }
    }
    Py_DECREF(out);
    return rc < 0 ? -1 : 0;
}

/* The next of ``items`` (a new reference), or NULL at the end or on an error:
 * from ``it`` if there is one, else ``items`` is an exact list, tuple or
 * dict (its keys), walked at ``*pos``. */
static PyObject *
next_item(PyObject *items, PyObject *it, Py_ssize_t *pos)
{
    PyObject *item;
    if (it != NULL)
        return PyIter_Next(it);
    if (PyList_CheckExact(items)) {
        if (*pos >= PyList_Size(items))
            return NULL;
        item = PyList_GetItem(items, (*pos)++);
    }
    else if (PyTuple_CheckExact(items)) {
        if (*pos >= PyTuple_Size(items))
            return NULL;
        item = PyTuple_GetItem(items, (*pos)++);
    }
    else {
        PyObject *value;
        if (!PyDict_Next(items, pos, &item, &value))
            return NULL;
    }
    Py_XINCREF(item);
    return item;
}

/* Memory, not instructions, is most of what a recipient costs here: its
 * connection, its transport and its fd's int are scattered objects, and the
 * send(2) of the recipient before evicted them from the caches. So the
 * recipients are gathered first (into an array: the dict lookups of a room's
 * fds run back to back, not one per send), and while one is sent to, the
 * next ones are asked for: the lines of the connection 2 * AHEAD on, the
 * objects behind the slots of the one AHEAD on (whose own lines were asked
 * for a send ago). Prefetches never fault. Measured in-process (perf, 1,000
 * recipients on loopback): about 7% less user-space time per delivery than
 * without them; the misses left are mostly the fd's int and the transport. */
#define AHEAD 1
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
/* (GCC 12 -O2 drops __builtin_prefetch here: its dead-code elimination.) */
#define PREFETCH(p) __asm__ __volatile__("prefetcht0 %0" : : "m"(*(const char *)(p)))
#elif defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch((const void *)(p))
#else
#define PREFETCH(p) ((void)0)
#endif

/* The lines of ``conn`` that the loop reads: its header and hot slots. */
static inline void
prefetch_conn(PyObject *conn)
{
    PREFETCH(conn);
    if (conn_type != NULL) {
        PREFETCH((char *)conn + off_out);
        PREFETCH((char *)conn + off_sockfd);
        PREFETCH((char *)conn + off_tx_empty);
    }
}

/* What the loop reads through the slots of ``conn`` (its own lines asked
 * for before): the transport (type, closing flag), the fd's int, ``out``. */
static inline void
prefetch_behind(PyObject *conn)
{
    if ((PyObject *)Py_TYPE(conn) != conn_type)
        return;
    PyObject *obj = SLOT(conn, off_transport);
    if (obj != NULL) {
        PREFETCH(obj);
        PREFETCH((char *)obj + 64);
        PREFETCH((char *)obj + 128);
    }
    if ((obj = SLOT(conn, off_sockfd)) != NULL)
        PREFETCH(obj);
    if ((obj = SLOT(conn, off_out)) != NULL)
        PREFETCH(obj);
}

/* An array of strong references that grows. */
typedef struct {
    PyObject **items;
    Py_ssize_t count, cap;
} Refs;

static int
refs_add(Refs *refs, PyObject *obj)
{
    if (refs->count == refs->cap) {
        Py_ssize_t cap = refs->cap < 64 ? 64 : refs->cap * 2;
        PyObject **items = PyMem_Realloc(refs->items, (size_t)cap * sizeof(PyObject *));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        refs->items = items;
        refs->cap = cap;
    }
    Py_INCREF(obj);
    refs->items[refs->count++] = obj;
    return 0;
}

static void
refs_clear(Refs *refs)
{
    for (Py_ssize_t i = 0; i < refs->count; i++)
        Py_XDECREF(refs->items[i]);
    PyMem_Free(refs->items);
}

/* The connections of fanout's ``items`` (looked up in ``conns`` unless it is
 * None), in order, into ``refs``. 0 or -1. */
static int
gather(PyObject *items, PyObject *conns, Refs *refs)
{
    PyObject *it = NULL;
    if (!PyList_CheckExact(items) && !PyTuple_CheckExact(items) && !PyDict_CheckExact(items)) {
        it = PyObject_GetIter(items);
        if (it == NULL)
            return -1;
    }
    else {
        Py_ssize_t size = PyObject_Size(items);
        refs->items = size > 0 ? PyMem_Malloc((size_t)size * sizeof(PyObject *)) : NULL;
        refs->cap = refs->items != NULL ? size : 0;
    }
    Py_ssize_t pos = 0;
    PyObject *item;
    while ((item = next_item(items, it, &pos)) != NULL) {
        PyObject *conn = item;
        if (conns != Py_None) {
            conn = PyDict_GetItemWithError(conns, item); /* borrowed */
            Py_DECREF(item);
            if (conn == NULL) {
                if (PyErr_Occurred())
                    break;
                continue;
            }
            Py_INCREF(conn);
        }
        int rc = refs_add(refs, conn);
        Py_DECREF(conn);
        if (rc < 0)
            break;
    }
    Py_XDECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject *
fanout(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "fanout(frame, items, conns, dirty, direct)");
        return NULL;
    }
    PyObject *frame = args[0], *conns = args[2], *dirty = args[3];
    if (!PyBytes_CheckExact(frame)) {
        PyErr_SetString(PyExc_TypeError, "fanout: frame must be bytes");
        return NULL;
    }
    if (conns != Py_None && !PyDict_Check(conns)) {
        PyErr_SetString(PyExc_TypeError, "fanout: conns must be a dict or None");
        return NULL;
    }
    if (!PyList_Check(dirty)) {
        PyErr_SetString(PyExc_TypeError, "fanout: dirty must be a list");
        return NULL;
    }
    int direct = PyObject_IsTrue(args[4]);
    if (direct < 0)
        return NULL;
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(frame, &buf, &len) < 0)
        return NULL;
    Refs refs = {NULL, 0, 0};
    PyObject *slow = PyList_New(0);
    if (slow == NULL || gather(args[1], conns, &refs) < 0)
        goto fail;
    int dirtied = 0;
    PyObject **all = refs.items;
    Py_ssize_t n = refs.count;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *conn = all[i];
        if (i + 2 * AHEAD < n)
            prefetch_conn(all[i + 2 * AHEAD]);
        if (i + AHEAD < n)
            prefetch_behind(all[i + AHEAD]);
        int fast = (PyObject *)Py_TYPE(conn) == conn_type;
        long fd = plain_fd(conn, fast);
        int rc;
        if (fd == -2)
            rc = -1;
        else if (fd < 0)
            rc = PyList_Append(slow, conn);
        else
            rc = deliver(conn, fast, fd, frame, buf, len, direct, dirty, &dirtied);
        /* Let go of it while its lines are at hand (not in a loop at the end). */
        all[i] = NULL;
        Py_DECREF(conn);
        if (rc < 0)
            goto fail;
    }
    refs_clear(&refs);
    return Py_BuildValue("(nNO)", n, slow, dirtied ? Py_True : Py_False);

fail:
    refs_clear(&refs);
    Py_XDECREF(slow);
    return NULL;
}

/* ``out`` (bytes, or a list of bytes) as one bytes object (a new reference),
 * or NULL with no error set if it holds something else. */
static PyObject *
joined(PyObject *out)
{
    if (PyBytes_CheckExact(out)) {
        Py_INCREF(out);
        return out;
    }
    if (!PyList_Check(out))
        return NULL;
    Py_ssize_t count = PyList_Size(out), total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *part = PyList_GetItem(out, i);
        if (!PyBytes_CheckExact(part))
            return NULL;
        total += PyBytes_Size(part);
    }
    PyObject *all = PyBytes_FromStringAndSize(NULL, total);
    if (all == NULL)
        return NULL;
    char *dst = PyBytes_AsString(all);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *part = PyList_GetItem(out, i);
        Py_ssize_t size = PyBytes_Size(part);
        memcpy(dst, PyBytes_AsString(part), (size_t)size);
        dst += size;
    }
    return all;
}

/* The end-of-tick write of one plain connection: 1 done, 0 rest for Python, -1 error. */
static int
flush_one(PyObject *conn, int fast, long fd)
{
    PyObject *out = get_attr(conn, fast, off_out, str_out);
    if (out == NULL)
        return -1;
    if (out == Py_None) { /* listed twice, or flushed early: nothing left */
        Py_DECREF(out);
        return 1;
    }
    int rc = transport_idle(conn, fast);
    PyObject *data = rc > 0 ? joined(out) : NULL;
    Py_DECREF(out);
    if (data == NULL)
        return rc < 0 || PyErr_Occurred() ? -1 : 0;
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(data, &buf, &len) < 0) {
        Py_DECREF(data);
        return -1;
    }
    Py_ssize_t sent = len ? send_some(fd, buf, len) : 0;
    if (sent == len) {
        Py_DECREF(data);
        return set_attr(conn, fast, off_out, str_out, Py_None) < 0 ? -1 : 1;
    }
    if (sent > 0) {
        PyObject *rest = PyBytes_FromStringAndSize(buf + sent, len - sent);
        rc = rest == NULL ? -1 : set_attr(conn, fast, off_out, str_out, rest);
        Py_XDECREF(rest);
    }
    else if (data != out) {
        /* joined once, not again in Python */
        rc = set_attr(conn, fast, off_out, str_out, data);
    }
    else {
        rc = 0;
    }
    Py_DECREF(data);
    return rc < 0 ? -1 : 0;
}

static PyObject *
flush(PyObject *self, PyObject *dirty)
{
    if (!PyList_Check(dirty)) {
        PyErr_SetString(PyExc_TypeError, "flush: dirty must be a list");
        return NULL;
    }
    PyObject *rest = PyList_New(0);
    if (rest == NULL)
        return NULL;
    /* No Python code runs below (see the top comment): the list cannot change. */
    Py_ssize_t count = PyList_Size(dirty);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i + 2 * AHEAD < count)
            prefetch_conn(PyList_GetItem(dirty, i + 2 * AHEAD));
        if (i + AHEAD < count)
            prefetch_behind(PyList_GetItem(dirty, i + AHEAD));
        PyObject *conn = PyList_GetItem(dirty, i); /* borrowed */
        Py_INCREF(conn);
        int fast = (PyObject *)Py_TYPE(conn) == conn_type;
        long fd = plain_fd(conn, fast);
        int rc = fd == -2 ? -1 : fd < 0 ? 0 : flush_one(conn, fast, fd);
        if (rc == 0)
            rc = PyList_Append(rest, conn);
        Py_DECREF(conn);
        if (rc < 0) {
            Py_DECREF(rest);
            return NULL;
        }
    }
    return rest;
}

/* ``cls.name`` as found in the __dict__ of ``cls`` or of a class of its MRO
 * (a new reference), NULL with no error set if there is none. */
static PyObject *
raw_attr(PyObject *cls, PyObject *name)
{
    PyObject *mro = PyObject_GetAttrString(cls, "__mro__");
    if (mro == NULL || !PyTuple_Check(mro)) {
        Py_XDECREF(mro);
        return NULL;
    }
    PyObject *found = NULL;
    for (Py_ssize_t i = 0; found == NULL && i < PyTuple_Size(mro); i++) {
        PyObject *dict = PyObject_GetAttrString(PyTuple_GetItem(mro, i), "__dict__");
        if (dict == NULL)
            break;
        found = PyMapping_HasKey(dict, name) ? PyObject_GetItem(dict, name) : NULL;
        Py_DECREF(dict);
    }
    Py_DECREF(mro);
    PyErr_Clear();
    return found;
}

/* The method ``name`` of ``cls`` to call unbound: ``f(obj)`` is
 * ``obj.name()`` for every instance (an unbound-method kind of object, and
 * instances without a __dict__ to shadow it). NULL (no error) otherwise. */
static PyObject *
unbound_method(PyObject *cls, PyObject *name)
{
    PyObject *offset = PyObject_GetAttrString(cls, "__dictoffset__");
    long dictoffset = offset == NULL ? -1 : PyLong_AsLong(offset);
    Py_XDECREF(offset);
    PyErr_Clear();
    if (dictoffset != 0)
        return NULL;
    PyObject *raw = raw_attr(cls, name);
    if (raw != NULL && !(PyType_GetFlags(Py_TYPE(raw)) & Py_TPFLAGS_METHOD_DESCRIPTOR))
        Py_CLEAR(raw);
    return raw;
}

static PyObject *
set_transport_type(PyObject *self, PyObject *cls)
{
    if (cls != Py_None && !PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "set_transport_type: a class or None");
        return NULL;
    }
    PyObject *previous = direct_type; /* the reference the module held */
    if (previous == NULL) {
        Py_INCREF(Py_None);
        previous = Py_None;
    }
    Py_CLEAR(meth_is_closing);
    Py_CLEAR(meth_get_write_buffer_size);
    direct_type = cls == Py_None ? NULL : cls;
    Py_XINCREF(direct_type);
    if (direct_type != NULL) {
        meth_is_closing = unbound_method(cls, str_is_closing);
        meth_get_write_buffer_size = unbound_method(cls, str_get_write_buffer_size);
    }
    return previous;
}

/* The offset of the slot ``name`` that ``cls`` itself declares, if it is a
 * plain writable object slot; -1 otherwise. */
static Py_ssize_t
slot_offset(PyObject *cls, PyObject *name)
{
    PyObject *descr = raw_attr(cls, name);
    PyObject *owner = descr == NULL ? NULL : PyObject_GetAttrString(descr, "__objclass__");
    PyErr_Clear();
    int own = descr != NULL && Py_TYPE(descr) == &PyMemberDescr_Type && owner == cls;
    Py_XDECREF(owner);
    Py_XDECREF(descr);
    const char *wanted = PyUnicode_AsUTF8AndSize(name, NULL);
    PyMemberDef *m = own ? PyType_GetSlot((PyTypeObject *)cls, Py_tp_members) : NULL;
    for (; m != NULL && m->name != NULL; m++) {
        if (strcmp(m->name, wanted) == 0)
            return m->type == T_OBJECT_EX && !(m->flags & READONLY) ? m->offset : -1;
    }
    return -1;
}

static PyObject *
set_connection_type(PyObject *self, PyObject *cls)
{
    if (cls != Py_None && !PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "set_connection_type: a class or None");
        return NULL;
    }
    Py_ssize_t offs[4] = {-1, -1, -1, -1};
    if (cls != Py_None) {
        PyTypeObject *type = (PyTypeObject *)cls;
        PyObject *names[4] = {str_sockfd, str_out, str_transport, str_tx_empty};
        int generic = PyType_GetSlot(type, Py_tp_getattro) == (void *)PyObject_GenericGetAttr &&
                      PyType_GetSlot(type, Py_tp_setattro) == (void *)PyObject_GenericSetAttr;
        for (int i = 0; i < 4; i++) {
            offs[i] = generic ? slot_offset(cls, names[i]) : -1;
            if (offs[i] < 0) {
                PyErr_Format(PyExc_TypeError,
                             "set_connection_type: %R has no plain slot %R "
                             "(or custom attribute access)", cls, names[i]);
                return NULL;
            }
        }
    }
    PyObject *previous = conn_type == NULL ? Py_None : conn_type;
    Py_INCREF(previous);
    Py_XDECREF(conn_type);
    conn_type = cls == Py_None ? NULL : cls;
    Py_XINCREF(conn_type);
    off_sockfd = offs[0];
    off_out = offs[1];
    off_transport = offs[2];
    off_tx_empty = offs[3];
    return previous;
}

static PyMethodDef methods[] = {
    {"fanout", (PyCFunction)(void (*)(void))fanout, METH_FASTCALL,
     "fanout(frame, items, conns, dirty, direct) -> (n, slow, dirtied): send frame\n"
     "directly to every plain connection with nothing waiting (if direct), queue it\n"
     "for the other plain ones; the rest (slow) is left to Python."},
    {"flush", (PyCFunction)flush, METH_O,
     "flush(dirty) -> rest: send each plain connection's queued bytes directly where\n"
     "nothing waits in its transport; the connections left to flush_out."},
    {"set_transport_type", (PyCFunction)set_transport_type, METH_O,
     "set_transport_type(cls) -> previous: the transport class written to directly\n"
     "(None: none)."},
    {"set_connection_type", (PyCFunction)set_connection_type, METH_O,
     "set_connection_type(cls) -> previous: the connection class whose slots (sockfd,\n"
     "out, transport, tx_empty) are read and written directly (None: none)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "hubbub.transport._speedups",
    "hubbub's compiled fan-out (see hubbub.transport.fanout).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_sockfd = PyUnicode_InternFromString("sockfd");
    str_out = PyUnicode_InternFromString("out");
    str_transport = PyUnicode_InternFromString("transport");
    str_get_write_buffer_size = PyUnicode_InternFromString("get_write_buffer_size");
    str_is_closing = PyUnicode_InternFromString("is_closing");
    str_tx_empty = PyUnicode_InternFromString("tx_empty");
    if (!str_sockfd || !str_out || !str_transport || !str_get_write_buffer_size ||
        !str_is_closing || !str_tx_empty)
        return NULL;
    return PyModule_Create(&module);
}
