/* hubbub's compiled fan-out: one encoded frame written to many WebSocket
 * connections (see hubbub/transport/fanout.py for the contract and the
 * pure-Python fallback, and docs/benchmarks.md "Steady load: the compiled
 * path" for why and what it measures).
 *
 *     fanout(frame, items, conns=None) -> (n, slow, partial)
 *
 * ``items`` is an iterable of connections, or (with ``conns``, a dict)
 * of keys looked up in ``conns`` (keys that are missing are skipped).
 * For each connection found, ``n`` is counted and:
 *
 *  - if it can be written directly (``sockfd >= 0``: plain TCP, no TLS, no
 *    compression), nothing of it is queued (``out is None``), its transport
 *    is not closing (``transport.is_closing()`` is false) and its write
 *    buffer is empty (``transport.get_write_buffer_size() == 0``, which
 *    includes libuv's own queue), the frame is sent with send(2)
 *    MSG_DONTWAIT | MSG_NOSIGNAL on that fd.
 *      - all of it sent: done;
 *      - part of it sent: ``(conn, rest)`` is appended to ``partial``;
 *      - nothing sent (EAGAIN, an error): ``conn`` goes to ``slow``;
 *  - otherwise (also when it has no ``sockfd`` attribute at all) ``conn``
 *    goes to ``slow``.
 *
 * The caller then queues the frame for ``slow`` and the rest for
 * ``partial`` through the Python path (WebSocketConnection.write), which
 * applies the usual backpressure (max_send_buffer, pause_writing) and lets
 * the transport see any socket error. Because a direct write happens only
 * when nothing of the connection waits anywhere, and everything else goes
 * behind it through the same queue, a connection's bytes never reorder.
 *
 * Invariant (the fd is this connection's socket): uvloop closes a
 * transport's socket at once when it closes it (a read error, an abort: libuv
 * closes the fd in uv_close) but calls connection_lost, which takes the
 * connection out of the broadcast set, only on a later loop iteration. In
 * between, the fd number may already belong to a new connection accepted
 * meanwhile. A closing transport is never written to directly: its
 * is_closing() turns true before the fd is closed.
 *
 * Nothing here calls back into Python except is_closing and
 * get_write_buffer_size (C methods of uvloop's transport) and the
 * dict/attribute reads, so no connection can change state in the middle of
 * the loop.
 */
#define PY_SSIZE_T_CLEAN
/* The stable ABI of 3.11 (Py_LIMITED_API is set by the build): one wheel
 * serves every CPython from 3.11 on. */
#include <Python.h>

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

static PyObject *str_sockfd;
static PyObject *str_out;
static PyObject *str_transport;
static PyObject *str_get_write_buffer_size;
static PyObject *str_is_closing;

/* 1: the frame was sent whole or in part (partial appended), 0: conn must
 * take the slow path, -1: a Python error is set. */
static int
try_direct(PyObject *conn, const char *buf, Py_ssize_t len, PyObject *frame,
           PyObject *partial)
{
    PyObject *obj = PyObject_GetAttr(conn, str_sockfd);
    if (obj == NULL) {
        /* Not a WebSocketConnection (a session of another carriage): the
         * Python path knows how to send to it. */
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    long fd = PyLong_AsLong(obj);
    Py_DECREF(obj);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0)
        return 0;
    obj = PyObject_GetAttr(conn, str_out);
    if (obj == NULL)
        return -1;
    int queued = obj != Py_None;
    Py_DECREF(obj);
    if (queued)
        return 0;
    PyObject *transport = PyObject_GetAttr(conn, str_transport);
    if (transport == NULL)
        return -1;
    obj = PyObject_CallMethodObjArgs(transport, str_is_closing, NULL);
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
    if (buffered != 0)
        return 0;
    ssize_t sent;
    do {
        sent = send((int)fd, buf, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent <= 0)
        return 0; /* EAGAIN or an error: the transport finds out on its write */
    if (sent == len)
        return 1;
    PyObject *rest = PyBytes_FromStringAndSize(buf + sent, len - sent);
    if (rest == NULL)
        return -1;
    PyObject *pair = PyTuple_Pack(2, conn, rest);
    Py_DECREF(rest);
    if (pair == NULL)
        return -1;
    int rc = PyList_Append(partial, pair);
    Py_DECREF(pair);
    return rc < 0 ? -1 : 1;
}

static PyObject *
fanout(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "fanout(frame, items, conns=None)");
        return NULL;
    }
    PyObject *frame = args[0];
    if (!PyBytes_CheckExact(frame)) {
        PyErr_SetString(PyExc_TypeError, "fanout: frame must be bytes");
        return NULL;
    }
    PyObject *conns = nargs == 3 ? args[2] : Py_None;
    if (conns != Py_None && !PyDict_Check(conns)) {
        PyErr_SetString(PyExc_TypeError, "fanout: conns must be a dict or None");
        return NULL;
    }
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(frame, &buf, &len) < 0)
        return NULL;
    PyObject *slow = PyList_New(0);
    PyObject *partial = PyList_New(0);
    PyObject *it = PyObject_GetIter(args[1]);
    if (slow == NULL || partial == NULL || it == NULL)
        goto fail;
    Py_ssize_t n = 0;
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
        int rc = len ? try_direct(conn, buf, len, frame, partial) : 1;
        if (rc == 0)
            rc = PyList_Append(slow, conn);
        Py_DECREF(conn);
        if (rc < 0)
            goto fail;
    }
    if (PyErr_Occurred())
        goto fail;
    Py_DECREF(it);
    return Py_BuildValue("(nNN)", n, slow, partial);

fail:
    Py_XDECREF(it);
    Py_XDECREF(slow);
    Py_XDECREF(partial);
    return NULL;
}

static PyMethodDef methods[] = {
    {"fanout", (PyCFunction)(void (*)(void))fanout, METH_FASTCALL,
     "fanout(frame, items, conns=None) -> (n, slow, partial): write frame directly\n"
     "to every connection whose queue and transport buffer are empty."},
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
