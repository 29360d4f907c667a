/*
 * sdbus_client.c: the sd-bus benchmark client.
 *
 * `kdbusctl bench --dbus-compare --client sd-bus` runs the same workloads as
 * the bench's own minimal client, but through systemd's sd-bus, so that the
 * brokers are also compared behind a real, widely used D-Bus client library.
 * The Rust driver starts this program once per broker and talks to it over
 * stdin/stdout:
 *
 *   sdbus-bench ADDRESS SIZE
 *
 * It forks an echo service (method Echo "s" -> "s" on /org/kdbus/Bench,
 * interface org.kdbus.Bench), connects its own client, warms up, prints
 * `ready`, then answers each command line with `ok ELAPSED_NS COUNT` or
 * `err MESSAGE`:
 *
 *   rr N              N sequential Echo calls with a SIZE-byte string
 *   pipe N            N Echo calls, at most 64 unanswered at any time
 *   large N           N sequential Echo calls with a 1 MiB string
 *   setup N TURN      N connections, each connecting and requesting a name
 *   broadcast N SUBS  N Tick signals, each to SUBS subscriber connections
 *
 * On end of stdin it kills the service and exits 0.
 *
 * Build: cc -O2 -Wall -Wextra -o sdbus-bench sdbus_client.c -lsystemd -lpthread
 */

#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#define BENCH_PATH "/org/kdbus/Bench"
#define BENCH_IFACE "org.kdbus.Bench"
#define TICK_MATCH "type='signal',interface='org.kdbus.Bench',member='Tick'"

#define DBUS_NAME "org.freedesktop.DBus"
#define DBUS_PATH "/org/freedesktop/DBus"

#define USEC_PER_SEC 1000000ULL
#define NSEC_PER_SEC 1000000000ULL
#define NSEC_PER_USEC 1000ULL

/* Every call gives up after this, so that a stuck broker never hangs the driver. */
#define CALL_TIMEOUT_US (10 * USEC_PER_SEC)
/* A broadcast ends at the latest this long after its first signal. */
#define BROADCAST_TIMEOUT_NS (30 * NSEC_PER_SEC)
/* A pipelined run with no reply at all for this long is given up. */
#define PIPE_STALL_NS (20 * NSEC_PER_SEC)
/* Idle waits are cut into slices this long so that deadlines and aborts are noticed. */
#define WAIT_SLICE_US (100 * 1000ULL)

/* The same window as the bench's own client (compare.rs WINDOW). */
#define PIPE_WINDOW 64
#define LARGE_SIZE ((size_t)1 << 20)
#define WARMUP_CALLS 10
/* Signals the emitter lets sd-bus queue before it waits for the socket. */
#define EMIT_QUEUE_MAX 256

struct bench {
        const char *address;
        sd_bus *bus;       /* the client connection, also the broadcast emitter */
        char service[256]; /* the echo service's unique name */
        pid_t service_pid;
        char *small;       /* SIZE 'x' characters */
        char *large;       /* LARGE_SIZE 'x' characters */
};

/* The message of the command that failed, printed by the command loop. */
static char errbuf[512];

static uint64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * NSEC_PER_SEC + (uint64_t)ts.tv_nsec;
}

static char *repeat_x(size_t n) {
        char *s = malloc(n + 1);

        if (!s)
                return NULL;
        memset(s, 'x', n);
        s[n] = '\0';
        return s;
}

/* Fills errbuf from an errno (negative, as sd-bus returns it) and a D-Bus error, if any. */
static int fail(const char *what, int r, const sd_bus_error *e) {
        if (e && sd_bus_error_is_set(e))
                snprintf(errbuf, sizeof errbuf, "%s: %s: %s", what, e->name,
                         e->message ? e->message : strerror(-r));
        else
                snprintf(errbuf, sizeof errbuf, "%s: %s", what, strerror(r < 0 ? -r : r));
        return -1;
}

/* sd_bus_wait's interruptions are harmless: the caller loops and re-checks its deadline. */
static int wait_slice(sd_bus *bus, uint64_t usec) {
        int r = sd_bus_wait(bus, usec);

        return r == -EINTR ? 0 : r;
}

/* A client connection as any sd-bus program gets one: connect, authenticate, Hello. */
static int open_bus(const char *address, sd_bus **ret) {
        sd_bus *bus = NULL;
        int r;

        r = sd_bus_new(&bus);
        if (r < 0)
                return r;
        r = sd_bus_set_address(bus, address);
        if (r >= 0)
                r = sd_bus_set_bus_client(bus, 1);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r < 0) {
                sd_bus_close_unref(bus);
                return r;
        }
        *ret = bus;
        return 0;
}

/* A method call to the bus driver, with our timeout rather than sd-bus's 25 s default. */
static int driver_call(sd_bus *bus, const char *member, sd_bus_message **reply,
                       sd_bus_error *e, const char *types, ...) {
        sd_bus_message *m = NULL;
        va_list ap;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, DBUS_NAME, DBUS_PATH, DBUS_NAME, member);
        if (r < 0)
                return r;
        va_start(ap, types);
        r = sd_bus_message_appendv(m, types, ap);
        va_end(ap);
        if (r >= 0)
                r = sd_bus_call(bus, m, CALL_TIMEOUT_US, e, reply);
        sd_bus_message_unref(m);
        return r;
}

/* ---- the echo service (child process) ---- */

static int echo_method(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *s;
        int r;

        (void)userdata;
        (void)error;
        r = sd_bus_message_read(m, "s", &s);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(m, "s", s);
}

static const sd_bus_vtable bench_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("Echo", "s", "s", echo_method, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END
};

/* Tells the parent why the service could not start; the parent prints it. */
static _Noreturn void service_fail(int fd, const char *what, int r) {
        dprintf(fd, "!%s: %s\n", what, strerror(-r));
        _exit(1);
}

/*
 * Runs in the child until killed. It reports its unique name through `fd`
 * only once it serves Echo, so the parent's first call cannot race it.
 */
static _Noreturn void run_service(const char *address, int fd, pid_t parent) {
        const char *unique;
        sd_bus *bus = NULL;
        int r;

        /* A driver killed with SIGKILL must not leave echo services behind. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
                _exit(1);

        r = open_bus(address, &bus);
        if (r < 0)
                service_fail(fd, "service connect", r);
        r = sd_bus_add_object_vtable(bus, NULL, BENCH_PATH, BENCH_IFACE, bench_vtable, NULL);
        if (r < 0)
                service_fail(fd, "service vtable", r);
        r = sd_bus_get_unique_name(bus, &unique);
        if (r < 0)
                service_fail(fd, "service Hello", r);
        dprintf(fd, "%s\n", unique);
        close(fd);

        for (;;) {
                r = sd_bus_process(bus, NULL);
                if (r < 0)
                        _exit(1);
                if (r > 0)
                        continue;
                r = wait_slice(bus, UINT64_MAX);
                if (r < 0)
                        _exit(1);
        }
}

/* Forks the service and reads its unique name, giving up after CALL_TIMEOUT_US. */
static int start_service(struct bench *b) {
        uint64_t deadline = now_ns() + CALL_TIMEOUT_US * NSEC_PER_USEC;
        size_t len = 0;
        pid_t parent = getpid();
        int fds[2];
        pid_t pid;

        if (pipe(fds) < 0)
                return fail("pipe", -errno, NULL);
        fflush(stdout);
        pid = fork();
        if (pid < 0)
                return fail("fork", -errno, NULL);
        if (pid == 0) {
                close(fds[0]);
                run_service(b->address, fds[1], parent);
        }
        close(fds[1]);
        b->service_pid = pid;

        for (;;) {
                uint64_t now = now_ns();
                struct pollfd p = { .fd = fds[0], .events = POLLIN };
                ssize_t k;
                int r;

                if (now >= deadline) {
                        close(fds[0]);
                        return fail("service start", -ETIMEDOUT, NULL);
                }
                r = poll(&p, 1, (int)((deadline - now) / 1000000 + 1));
                if (r < 0 && errno != EINTR) {
                        close(fds[0]);
                        return fail("poll", -errno, NULL);
                }
                if (r <= 0)
                        continue;
                k = read(fds[0], b->service + len, sizeof b->service - 1 - len);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0 || len + (size_t)k >= sizeof b->service - 1) {
                        close(fds[0]);
                        return fail("service start", k < 0 ? -errno : -EPIPE, NULL);
                }
                len += (size_t)k;
                b->service[len] = '\0';
                if (memchr(b->service, '\n', len))
                        break;
        }
        close(fds[0]);
        b->service[strcspn(b->service, "\n")] = '\0';
        if (b->service[0] == '!') {
                snprintf(errbuf, sizeof errbuf, "%s", b->service + 1);
                return -1;
        }
        return 0;
}

/* ---- request/reply ---- */

static int echo_call(struct bench *b, const char *arg, bool verify) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *m = NULL, *reply = NULL;
        const char *s;
        int r;

        r = sd_bus_message_new_method_call(b->bus, &m, b->service, BENCH_PATH, BENCH_IFACE, "Echo");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", arg);
        if (r >= 0)
                r = sd_bus_call(b->bus, m, CALL_TIMEOUT_US, &e, &reply);
        if (r >= 0)
                r = sd_bus_message_read(reply, "s", &s);
        if (r < 0) {
                fail("Echo", r, &e);
        } else if (verify && strcmp(s, arg) != 0) {
                snprintf(errbuf, sizeof errbuf, "Echo: the reply differs from the request");
                r = -1;
        }
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        sd_bus_message_unref(m);
        return r < 0 ? -1 : 0;
}

/*
 * One call at a time. Each call is a fresh message, as in any real client:
 * a sealed message keeps its cookie and cannot be sent again.
 */
static int cmd_sequential(struct bench *b, const char *arg, uint64_t n, uint64_t *elapsed) {
        uint64_t t0 = now_ns();

        for (uint64_t i = 0; i < n; i++)
                if (echo_call(b, arg, false) < 0)
                        return -1;
        *elapsed = now_ns() - t0;
        return 0;
}

static int cmd_rr(struct bench *b, uint64_t n, uint64_t *elapsed) {
        return cmd_sequential(b, b->small, n, elapsed);
}

static int cmd_large(struct bench *b, uint64_t n, uint64_t *elapsed) {
        return cmd_sequential(b, b->large, n, elapsed);
}

/* ---- pipelined calls ---- */

/*
 * The replies of the current `pipe` command. Each call carries the command's
 * generation as its userdata, so that a late reply (or sd-bus's synthesized
 * error) to a command that was given up is not counted in a later one.
 */
static struct {
        uint64_t generation;
        uint64_t replies;
        uint64_t errors;
        char first_error[256];
} pipe_state;

static int on_echo_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        (void)ret_error;
        if ((uintptr_t)userdata != pipe_state.generation)
                return 0;
        pipe_state.replies++;
        if (sd_bus_message_is_method_error(m, NULL) && pipe_state.errors++ == 0) {
                const sd_bus_error *e = sd_bus_message_get_error(m);

                snprintf(pipe_state.first_error, sizeof pipe_state.first_error, "%s: %s",
                         e && e->name ? e->name : "error",
                         e && e->message ? e->message : "");
        }
        return 0;
}

static int cmd_pipe(struct bench *b, uint64_t n, uint64_t *elapsed) {
        uint64_t sent = 0, answered = 0, t0, last_progress;
        int r;

        pipe_state.generation++;
        pipe_state.replies = 0;
        pipe_state.errors = 0;
        pipe_state.first_error[0] = '\0';

        t0 = last_progress = now_ns();
        while (pipe_state.replies < n) {
                /* Refill the window before reading, so the broker always has work queued. */
                while (sent < n && sent - pipe_state.replies < PIPE_WINDOW) {
                        sd_bus_message *m = NULL;

                        r = sd_bus_message_new_method_call(b->bus, &m, b->service, BENCH_PATH,
                                                           BENCH_IFACE, "Echo");
                        if (r >= 0)
                                r = sd_bus_message_append(m, "s", b->small);
                        if (r >= 0)
                                r = sd_bus_call_async(b->bus, NULL, m, on_echo_reply,
                                                      (void *)(uintptr_t)pipe_state.generation,
                                                      CALL_TIMEOUT_US);
                        sd_bus_message_unref(m);
                        if (r < 0)
                                return fail("Echo (async)", r, NULL);
                        sent++;
                }

                r = sd_bus_process(b->bus, NULL);
                if (r < 0)
                        return fail("sd_bus_process", r, NULL);
                if (pipe_state.replies != answered) {
                        answered = pipe_state.replies;
                        last_progress = now_ns();
                }
                if (r > 0)
                        continue;
                if (now_ns() - last_progress > PIPE_STALL_NS)
                        return fail("pipe: no reply", -ETIMEDOUT, NULL);
                r = wait_slice(b->bus, WAIT_SLICE_US);
                if (r < 0)
                        return fail("sd_bus_wait", r, NULL);
        }
        *elapsed = now_ns() - t0;

        if (pipe_state.errors > 0) {
                snprintf(errbuf, sizeof errbuf, "%llu of %llu calls failed, first: %s",
                         (unsigned long long)pipe_state.errors, (unsigned long long)n,
                         pipe_state.first_error);
                return -1;
        }
        return 0;
}

/* ---- connection setup ---- */

static int request_name(sd_bus *bus, const char *name) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        uint32_t code = 0;
        int r;

        /* Flags 4 (DO_NOT_QUEUE), exactly what the bench's own client sends. */
        r = driver_call(bus, "RequestName", &reply, &e, "su", name, (uint32_t)4);
        if (r >= 0)
                r = sd_bus_message_read(reply, "u", &code);
        if (r < 0)
                fail("RequestName", r, &e);
        else if (code != 1) {
                snprintf(errbuf, sizeof errbuf, "RequestName %s: reply %u, not primary owner",
                         name, code);
                r = -1;
        }
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        return r < 0 ? -1 : 0;
}

static int cmd_setup(struct bench *b, uint64_t n, uint64_t turn, uint64_t *elapsed) {
        sd_bus **conns = calloc(n ? n : 1, sizeof *conns);
        uint64_t i, t0;
        int ret = 0;

        if (!conns)
                return fail("setup", -ENOMEM, NULL);

        t0 = now_ns();
        for (i = 0; i < n; i++) {
                char name[128];
                int r;

                r = open_bus(b->address, &conns[i]);
                if (r < 0) {
                        ret = fail("connect", r, NULL);
                        break;
                }
                /* TURN keeps names unique across turns, in case a broker is slow to free them. */
                snprintf(name, sizeof name, "org.kdbus.SdBench.T%llu.C%llu",
                         (unsigned long long)turn, (unsigned long long)i);
                if (request_name(conns[i], name) < 0) {
                        ret = -1;
                        break;
                }
        }
        *elapsed = now_ns() - t0;

        for (i = 0; i < n; i++)
                if (conns[i])
                        sd_bus_close_unref(conns[i]);
        free(conns);
        return ret;
}

/* ---- broadcast ---- */

struct broadcast {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        const char *address;
        uint64_t n;
        unsigned ready;        /* subscribers that have their match, or failed to */
        bool go;               /* the emitter is about to send */
        atomic_bool abort;     /* the emitter gave up: subscribers stop at once */
        uint64_t deadline_ns;  /* set before go */
};

struct subscriber {
        pthread_t thread;
        struct broadcast *shared;
        uint64_t received;
        uint64_t done_ns;      /* when it got its N signals, or gave up */
        int error;
        char what[64];
};

static int on_tick(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        struct subscriber *s = userdata;

        (void)m;
        (void)ret_error;
        if (s->received < s->shared->n && ++s->received == s->shared->n)
                s->done_ns = now_ns();
        return 0;
}

/*
 * One subscriber with its own connection (sd-bus objects are not shared
 * between threads). It adds its match synchronously, so the broker has it
 * before this thread reports ready.
 */
static void *subscriber_main(void *arg) {
        struct subscriber *s = arg;
        struct broadcast *sh = s->shared;
        sd_bus *bus = NULL;
        uint64_t deadline;
        bool go;
        int r;

        r = open_bus(sh->address, &bus);
        if (r < 0)
                snprintf(s->what, sizeof s->what, "subscriber connect");
        else {
                r = sd_bus_add_match(bus, NULL, TICK_MATCH, on_tick, s);
                if (r < 0)
                        snprintf(s->what, sizeof s->what, "subscriber AddMatch");
        }
        s->error = r < 0 ? r : 0;

        pthread_mutex_lock(&sh->lock);
        sh->ready++;
        pthread_cond_broadcast(&sh->cond);
        while (!sh->go && !atomic_load(&sh->abort))
                pthread_cond_wait(&sh->cond, &sh->lock);
        go = sh->go && !atomic_load(&sh->abort);
        deadline = sh->deadline_ns;
        pthread_mutex_unlock(&sh->lock);

        while (r >= 0 && go && s->received < sh->n) {
                uint64_t now;

                r = sd_bus_process(bus, NULL);
                if (r < 0) {
                        snprintf(s->what, sizeof s->what, "subscriber sd_bus_process");
                        s->error = r;
                        break;
                }
                if (r > 0)
                        continue;
                now = now_ns();
                if (now >= deadline || atomic_load(&sh->abort)) {
                        /* Counted as delivered so far; the driver sees the shortfall in COUNT. */
                        s->done_ns = now;
                        break;
                }
                r = wait_slice(bus, WAIT_SLICE_US);
                if (r < 0) {
                        snprintf(s->what, sizeof s->what, "subscriber sd_bus_wait");
                        s->error = r;
                }
        }

        if (bus)
                sd_bus_close_unref(bus);
        return NULL;
}

/* Lets sd-bus write out what it queued, without sd_bus_flush's unbounded wait. */
static int drain_writes(sd_bus *bus, uint64_t deadline) {
        for (;;) {
                uint64_t queued;
                int r;

                r = sd_bus_get_n_queued_write(bus, &queued);
                if (r < 0 || queued == 0)
                        return r;
                r = sd_bus_process(bus, NULL);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                if (now_ns() >= deadline)
                        return -ETIMEDOUT;
                r = wait_slice(bus, WAIT_SLICE_US);
                if (r < 0)
                        return r;
        }
}

/* Sends the N signals and waits for the subscribers; on failure fills errbuf. */
static int emit_ticks(struct bench *b, struct broadcast *sh, uint64_t n, uint64_t *t0) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r;

        /* A round trip after the subscribers' AddMatch replies: every match is in effect. */
        r = driver_call(b->bus, "GetNameOwner", &reply, &e, "s", DBUS_NAME);
        sd_bus_message_unref(reply);
        if (r < 0) {
                fail("GetNameOwner", r, &e);
                sd_bus_error_free(&e);
                return -1;
        }

        pthread_mutex_lock(&sh->lock);
        *t0 = now_ns();
        sh->deadline_ns = *t0 + BROADCAST_TIMEOUT_NS;
        sh->go = true;
        pthread_cond_broadcast(&sh->cond);
        pthread_mutex_unlock(&sh->lock);

        for (uint64_t i = 0; i < n; i++) {
                uint64_t queued = 0;

                r = sd_bus_emit_signal(b->bus, BENCH_PATH, BENCH_IFACE, "Tick", "s", b->small);
                if (r < 0)
                        return fail("emit Tick", r, NULL);
                /* Once the socket is full sd-bus only queues; write out before it grows large. */
                r = sd_bus_get_n_queued_write(b->bus, &queued);
                if (r >= 0 && queued > EMIT_QUEUE_MAX)
                        r = drain_writes(b->bus, sh->deadline_ns);
                if (r < 0)
                        return fail("emit Tick", r, NULL);
        }
        r = drain_writes(b->bus, sh->deadline_ns);
        if (r < 0)
                return fail("emit Tick", r, NULL);
        return 0;
}

static int cmd_broadcast(struct bench *b, uint64_t n, uint64_t subs,
                         uint64_t *elapsed, uint64_t *count) {
        struct broadcast sh = { .address = b->address, .n = n };
        struct subscriber *s = calloc(subs ? subs : 1, sizeof *s);
        uint64_t started = 0, t0 = 0, last = 0, ready_deadline;
        pthread_condattr_t ca;
        pthread_attr_t ta;
        int ret = 0;

        if (!s)
                return fail("broadcast", -ENOMEM, NULL);
        pthread_mutex_init(&sh.lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&sh.cond, &ca);
        pthread_condattr_destroy(&ca);
        atomic_init(&sh.abort, false);
        /* sd-bus needs little stack; the default 8 MiB adds up with many subscribers. */
        pthread_attr_init(&ta);
        pthread_attr_setstacksize(&ta, 1 << 20);

        for (; started < subs; started++) {
                int r;

                s[started].shared = &sh;
                r = pthread_create(&s[started].thread, &ta, subscriber_main, &s[started]);
                if (r != 0) {
                        ret = fail("pthread_create", -r, NULL);
                        break;
                }
        }
        pthread_attr_destroy(&ta);

        /* Wait until every subscriber has its match (or failed), but not forever. */
        ready_deadline = now_ns() + BROADCAST_TIMEOUT_NS;
        pthread_mutex_lock(&sh.lock);
        while (ret == 0 && sh.ready < started) {
                struct timespec ts = {
                        .tv_sec = (time_t)(ready_deadline / NSEC_PER_SEC),
                        .tv_nsec = (long)(ready_deadline % NSEC_PER_SEC),
                };
                if (pthread_cond_timedwait(&sh.cond, &sh.lock, &ts) == ETIMEDOUT) {
                        ret = fail("subscribers not ready", -ETIMEDOUT, NULL);
                        break;
                }
        }
        pthread_mutex_unlock(&sh.lock);
        for (uint64_t i = 0; ret == 0 && i < started; i++)
                if (s[i].error < 0)
                        ret = fail(s[i].what, s[i].error, NULL);

        if (ret == 0)
                ret = emit_ticks(b, &sh, n, &t0);

        if (ret < 0) {
                pthread_mutex_lock(&sh.lock);
                atomic_store(&sh.abort, true);
                pthread_cond_broadcast(&sh.cond);
                pthread_mutex_unlock(&sh.lock);
        }
        for (uint64_t i = 0; i < started; i++)
                pthread_join(s[i].thread, NULL);

        if (ret == 0) {
                /* N = 0 or no subscribers: the fan-out ends with the last write. */
                last = now_ns();
                if (n > 0 && subs > 0) {
                        last = t0;
                        for (uint64_t i = 0; i < started; i++)
                                if (s[i].done_ns > last)
                                        last = s[i].done_ns;
                }
                *elapsed = last - t0;
                *count = 0;
                for (uint64_t i = 0; i < started; i++) {
                        *count += s[i].received;
                        if (ret == 0 && s[i].error < 0)
                                ret = fail(s[i].what, s[i].error, NULL);
                }
        }

        pthread_cond_destroy(&sh.cond);
        pthread_mutex_destroy(&sh.lock);
        free(s);
        return ret;
}

/* ---- command loop ---- */

/* A count: decimal digits only, so that "-1" is refused rather than wrapped. */
static bool parse_u64(const char *s, uint64_t *ret) {
        char *end;

        if (!s || *s < '0' || *s > '9')
                return false;
        errno = 0;
        *ret = strtoull(s, &end, 10);
        return errno == 0 && *end == '\0';
}

/* Runs one command line; returns 0 with ELAPSED_NS and COUNT, or -1 with errbuf. */
static int run_command(struct bench *b, char *line, uint64_t *elapsed, uint64_t *count) {
        char *save = NULL;
        char *cmd = strtok_r(line, " \t", &save);
        char *a1 = strtok_r(NULL, " \t", &save);
        char *a2 = strtok_r(NULL, " \t", &save);
        bool extra = strtok_r(NULL, " \t", &save) != NULL;
        uint64_t n, m;

        errbuf[0] = '\0';
        if (!cmd) {
                snprintf(errbuf, sizeof errbuf, "empty command");
                return -1;
        }
        if (!parse_u64(a1, &n) || extra) {
                snprintf(errbuf, sizeof errbuf, "usage: rr|pipe|large N, setup N TURN, broadcast N SUBS");
                return -1;
        }
        *count = n;

        if (strcmp(cmd, "rr") == 0 && !a2)
                return cmd_rr(b, n, elapsed);
        if (strcmp(cmd, "pipe") == 0 && !a2)
                return cmd_pipe(b, n, elapsed);
        if (strcmp(cmd, "large") == 0 && !a2)
                return cmd_large(b, n, elapsed);
        if (strcmp(cmd, "setup") == 0 && parse_u64(a2, &m))
                return cmd_setup(b, n, m, elapsed);
        if (strcmp(cmd, "broadcast") == 0 && parse_u64(a2, &m))
                return cmd_broadcast(b, n, m, elapsed, count);

        snprintf(errbuf, sizeof errbuf, "unknown command or arguments: %s", cmd);
        return -1;
}

/* The driver reads one line per answer: no newline may leak from an error text. */
static void print_err(void) {
        for (char *p = errbuf; *p; p++)
                if (*p == '\n' || *p == '\r')
                        *p = ' ';
        printf("err %s\n", errbuf[0] ? errbuf : "failed");
        fflush(stdout);
}

static void stop_service(struct bench *b) {
        if (b->service_pid > 0) {
                kill(b->service_pid, SIGKILL);
                waitpid(b->service_pid, NULL, 0);
                b->service_pid = 0;
        }
}

int main(int argc, char **argv) {
        struct bench b = { 0 };
        struct rlimit rl;
        char *line = NULL;
        size_t cap = 0;
        uint64_t size;
        int r;

        if (argc != 3 || !parse_u64(argv[2], &size)) {
                fprintf(stderr, "usage: %s ADDRESS SIZE\n", argv[0]);
                return 2;
        }
        b.address = argv[1];

        /* setup and broadcast open many connections at once. */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                setrlimit(RLIMIT_NOFILE, &rl);
        }

        b.small = repeat_x(size);
        b.large = repeat_x(LARGE_SIZE);
        if (!b.small || !b.large) {
                printf("err out of memory\n");
                return 1;
        }

        /* Fork before any sd-bus object exists: sd-bus connections do not survive fork. */
        if (start_service(&b) < 0)
                goto fatal;
        r = open_bus(b.address, &b.bus);
        if (r < 0) {
                fail("client connect", r, NULL);
                goto fatal;
        }
        /* Warm-up also checks that the echo really echoes. */
        for (int i = 0; i < WARMUP_CALLS; i++)
                if (echo_call(&b, b.small, true) < 0)
                        goto fatal;
        printf("ready\n");
        fflush(stdout);

        while (getline(&line, &cap, stdin) >= 0) {
                uint64_t elapsed = 0, count = 0;

                line[strcspn(line, "\r\n")] = '\0';
                if (run_command(&b, line, &elapsed, &count) < 0) {
                        print_err();
                        continue;
                }
                printf("ok %llu %llu\n", (unsigned long long)elapsed, (unsigned long long)count);
                fflush(stdout);
        }

        free(line);
        stop_service(&b);
        sd_bus_flush_close_unref(b.bus);
        free(b.small);
        free(b.large);
        return 0;

fatal:
        print_err();
        stop_service(&b);
        if (b.bus)
                sd_bus_close_unref(b.bus);
        return 1;
}
