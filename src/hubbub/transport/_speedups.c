/* hubbub's compiled fan-out: one encoded frame written to many WebSocket
 * connections, and the end-of-tick write of what was queued (see
 * hubbub/transport/fanout.py for the contract, the policy and the
 * pure-Python fallback, and docs/benchmarks.md "Steady load: the compiled
 * path" for why and what it measures).
 *
 *     fanout(frame, items, conns, dirty, direct) -> (n, slow, dirtied)
 *     flush(dirty) -> rest
 *     set_transport_type(cls) -> the previous one
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
 * dict) of keys looked up in ``conns`` (missing keys are skipped). For each
 * connection found, ``n`` is counted and:
 *
 *  - not plain: it goes to ``slow`` (the caller calls its
 *    ``send_frame_bytes``);
 *  - plain, ``direct`` true, nothing of it queued (``out is None``), its
 *    transport not closing (``is_closing()`` false) and its write buffer
 *    empty (``get_write_buffer_size() == 0``, libuv's queue included): the
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
 * Nothing here calls back into Python except is_closing and
 * get_write_buffer_size (C methods of uvloop's transport) and the
 * dict/attribute reads and writes (``out`` is a slot), so no connection can
 * change state in the middle of a loop.
 */
#define PY_SSIZE_T_CLEAN
/* The stable ABI of 3.11 (Py_LIMITED_API is set by the build): one wheel
 * serves every CPython from 3.11 on. */
#include <Python.h>

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

static PyObject *str_sockfd;
static PyObject *str_out;
static PyObject *str_transport;
static PyObject *str_get_write_buffer_size;
static PyObject *str_is_closing;
/* The only transport type written to directly (NULL: none). */
static PyObject *direct_type;

/* The socket of a plain connection; -1 if it is not one, -2 on a Python error. */
static long
plain_fd(PyObject *conn)
{
    PyObject *obj = PyObject_GetAttr(conn, str_sockfd);
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
transport_idle(PyObject *conn)
{
    PyObject *transport = PyObject_GetAttr(conn, str_transport);
    if (transport == NULL)
        return -1;
    if ((PyObject *)Py_TYPE(transport) != direct_type) {
        Py_DECREF(transport);
        return 0;
    }
    PyObject *obj = PyObject_CallMethodObjArgs(transport, str_is_closing, NULL);
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
    obj = PyObject_CallMethodObjArgs(transport, str_get_write_buffer_size, NULL);
    Py_DECREF(transport);
    if (obj == NULL)
        return -1;
    Py_ssize_t buffered = PyLong_AsSsize_t(obj);
    Py_DECREF(obj);
    if (buffered == -1 && PyErr_Occurred())
        return -1;
    return buffered == 0;
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
queue(PyObject *conn, PyObject *out, PyObject *data, PyObject *dirty, int *dirtied)
{
    if (out == Py_None) {
        if (PyObject_SetAttr(conn, str_out, data) < 0)
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
    int rc = PyObject_SetAttr(conn, str_out, pair);
    Py_DECREF(pair);
    return rc;
}

/* One plain connection of a fan-out: write directly or queue. 0 or -1. */
static int
deliver(PyObject *conn, long fd, PyObject *frame, const char *buf, Py_ssize_t len,
        int direct, PyObject *dirty, int *dirtied)
{
    PyObject *out = PyObject_GetAttr(conn, str_out);
    if (out == NULL)
        return -1;
    int rc = 0;
    Py_ssize_t sent = 0;
    if (direct && out == Py_None && len > 0) {
        rc = transport_idle(conn);
        if (rc > 0)
            sent = send_some(fd, buf, len);
    }
    if (rc >= 0 && sent < len) {
        if (sent == 0) {
            rc = queue(conn, out, frame, dirty, dirtied);
        }
        else {
            PyObject *rest = PyBytes_FromStringAndSize(buf + sent, len - sent);
            rc = rest == NULL ? -1 : queue(conn, out, rest, dirty, dirtied);
            Py_XDECREF(rest);
        }
    }
    Py_DECREF(out);
    return rc < 0 ? -1 : 0;
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
    PyObject *slow = PyList_New(0);
    PyObject *it = PyObject_GetIter(args[1]);
    if (slow == NULL || it == NULL)
        goto fail;
    Py_ssize_t n = 0;
    int dirtied = 0;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        PyObject *conn = item;
        if (conns != Py_None) {
            conn = PyDict_GetItemWithError(conns, item); /* borrowed */
            Py_DECREF(item);
            if (conn == NULL) {
                if (PyErr_Occurred())
                    goto fail;
                continue;
            }
            Py_INCREF(conn);
        }
        n++;
        long fd = plain_fd(conn);
        int rc;
        if (fd == -2)
            rc = -1;
        else if (fd < 0)
            rc = PyList_Append(slow, conn);
        else
            rc = deliver(conn, fd, frame, buf, len, direct, dirty, &dirtied);
        Py_DECREF(conn);
        if (rc < 0)
            goto fail;
    }
    if (PyErr_Occurred())
        goto fail;
    Py_DECREF(it);
    return Py_BuildValue("(nNO)", n, slow, dirtied ? Py_True : Py_False);

fail:
    Py_XDECREF(it);
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
flush_one(PyObject *conn, long fd)
{
    PyObject *out = PyObject_GetAttr(conn, str_out);
    if (out == NULL)
        return -1;
    if (out == Py_None) { /* listed twice, or flushed early: nothing left */
        Py_DECREF(out);
        return 1;
    }
    int rc = transport_idle(conn);
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
        return PyObject_SetAttr(conn, str_out, Py_None) < 0 ? -1 : 1;
    }
    if (sent > 0) {
        PyObject *rest = PyBytes_FromStringAndSize(buf + sent, len - sent);
        rc = rest == NULL ? -1 : PyObject_SetAttr(conn, str_out, rest);
        Py_XDECREF(rest);
    }
    else if (data != out) {
        rc = PyObject_SetAttr(conn, str_out, data); /* joined once, not again in Python */
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
        PyObject *conn = PyList_GetItem(dirty, i); /* borrowed */
        Py_INCREF(conn);
        long fd = plain_fd(conn);
        int rc = fd == -2 ? -1 : fd < 0 ? 0 : flush_one(conn, fd);
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
    direct_type = cls == Py_None ? NULL : cls;
    Py_XINCREF(direct_type);
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
    if (!str_sockfd || !str_out || !str_transport || !str_get_write_buffer_size ||
        !str_is_closing)
        return NULL;
    return PyModule_Create(&module);
}
