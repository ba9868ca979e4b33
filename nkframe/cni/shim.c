/* nkframe-cni-shim: the CNI plugin a runtime execs, as small as a process can be.
 *
 * A runtime execs its CNI plugin once per pod and command; a Python plugin pays the
 * interpreter's start-up each time.  This program only forwards what the runtime handed it (the
 * CNI_* environment and the network configuration on stdin) to the node's agent in one "cni.exec"
 * request, and prints the answer: the agent runs nkframe's CNI commands in process
 * (nkframe/agent/cni.py).  docs/cni.md is the user's reference.
 *
 * The agent's socket: the configuration's top-level agentSocket, else $NKFRAME_AGENT_SOCKET,
 * else /run/nkframe/agent.sock (nkframe-cni's order).  The agent checks that the configuration
 * names the socket it serves.
 *
 * Request (one line):
 *   {"v":1,"id":1,"method":"cni.exec","params":{"env":{"CNI_...":"..."},"stdin":"..."}}
 * Bytes >= 0x80 are written as \udcXX (Python's surrogateescape), so the agent recovers the exact
 * bytes without this program knowing UTF-8.
 *
 * Answer (one line; the agent writes its fields in this order, see nkframe/agent/protocol.py ok()):
 *   {"v":1,"id":1,"ok":true,"result":{"exit":N,"stdout":"<base64>"}}
 * or an error answer ("ok":false), printed as a CNI error.  When no agent answers this program
 * prints CNI error 11 (try again later) itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/nkframe/agent.sock"
#define MAX_STDIN (1 << 20)  /* the agent's request line limit (protocol.MAX_LINE) */
#define MAX_LINE (1 << 20)
#define MAX_ANSWER (16 << 20)
#define ANSWER_TIMEOUT 300   /* s: the agent waits up to 120 s for an IPAM plugin */

/* CNI error codes (nkframe/cni/errors.py) */
#define INVALID_ENVIRONMENT 4
#define IO_FAILURE 5
#define INVALID_CONFIG 7
#define TRY_AGAIN_LATER 11
#define NOT_AVAILABLE 50  /* STATUS: cannot serve ADD */
#define INTERNAL 999
/* The variables the CNI specification defines: the only ones forwarded (nkframe-cni reads just
 * these too), each at most CNI_VALUE_MAX bytes (nkframe.cni.config.CNI_VALUE_MAX). */
#define CNI_VALUE_MAX (64 << 10)
static const char *const CNI_VARIABLES[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS",
					    "CNI_IFNAME", "CNI_ARGS", "CNI_PATH", NULL};

static int cni_variable(const char *name, size_t len)
{
	for (const char *const *v = CNI_VARIABLES; *v; v++)
		if (strlen(*v) == len && memcmp(*v, name, len) == 0)
			return 1;
	return 0;
}

extern char **environ;

struct buf {
	char *p;
	size_t len, cap;
};

static const char *cni_version = "1.1.0";

static void out_of_memory(void)
{
	/* Nothing to build the message with; a fixed one. */
	fputs("{\"cniVersion\": \"1.1.0\", \"code\": 999, \"msg\": \"nkframe-cni-shim: out of memory\", \"details\": \"\"}\n", stdout);
	exit(1);
}

static void grow(struct buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more)
		cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p)
		out_of_memory();
	b->p = p;
	b->cap = cap;
}

static void put(struct buf *b, const char *s, size_t n)
{
	grow(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void puts_(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

/* A JSON string's content: '"', '\\' and control characters escaped; bytes >= 0x80 as lone
 * surrogates \udcXX, which the agent turns back into the same bytes. */
static void put_escaped(struct buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			put(b, e, 2);
		} else if (c < 0x20 || c >= 0x80) {
			char e[6] = {'\\', 'u', c >= 0x80 ? 'd' : '0', c >= 0x80 ? 'c' : '0', hex[c >> 4], hex[c & 15]};
			put(b, e, 6);
		} else {
			put(b, (const char *)&c, 1);
		}
	}
}

/* Print a CNI error of our own and exit 1.  ``details_json`` is already JSON string content. */
static void fail_raw(int code, const char *msg, const char *details_json, size_t n)
{
	struct buf b = {0};
	puts_(&b, "{\"cniVersion\": \"");
	puts_(&b, cni_version);
	puts_(&b, "\", \"code\": ");
	char num[16];
	snprintf(num, sizeof num, "%d", code);
	puts_(&b, num);
	puts_(&b, ", \"msg\": \"");
	put_escaped(&b, msg, strlen(msg));
	puts_(&b, "\", \"details\": \"");
	put(&b, details_json, n);
	puts_(&b, "\"}\n");
	fwrite(b.p, 1, b.len, stdout);
	exit(1);
}

static void fail(int code, const char *msg, const char *fmt, ...)
{
	char details[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(details, sizeof details, fmt, ap);
	va_end(ap);
	struct buf d = {0};
	put_escaped(&d, details, strlen(details));
	fail_raw(code, msg, d.p ? d.p : "", d.len);
}

/* The string value of the configuration's top-level key ``key``: its first byte in *v and its
 * length in *vlen, or 0 when there is none (or it is not a string, or holds an escape).  A scan,
 * not a parser: strings are skipped whole and only a key at depth 1 counts.  The agent parses
 * the whole configuration again and checks both values this program takes from it. */
static int find_key(const char *s, size_t n, const char *key, const char **v, size_t *vlen)
{
	size_t keylen = strlen(key);
	int depth = 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '{' || c == '[') {
			depth++;
		} else if (c == '}' || c == ']') {
			depth--;
		} else if (c == '"') {
			size_t start = ++i;
			while (i < n && s[i] != '"')
				i += s[i] == '\\' ? 2 : 1;
			if (i >= n)
				return 0;
			if (depth != 1 || i - start != keylen || memcmp(s + start, key, keylen) != 0)
				continue;
			size_t j = i + 1;
			while (j < n && strchr(" \t\r\n", s[j]))
				j++;
			if (j >= n || s[j] != ':')
				continue;
			j++;
			while (j < n && strchr(" \t\r\n", s[j]))
				j++;
			if (j >= n || s[j] != '"')
				return 0;
			size_t k = ++j;
			while (k < n && s[k] != '"' && s[k] != '\\')
				k++;
			if (k >= n || s[k] != '"')
				return 0;
			*v = s + j;
			*vlen = k - j;
			return 1;
		}
	}
	return 0;
}

/* The configuration's top-level "cniVersion" if it is one nkframe speaks (errors are written in
 * it, as the Python plugin does), else 1.1.0. */
static void find_version(const char *s, size_t n)
{
	static const char *known[] = {"0.4.0", "1.0.0", "1.1.0"};
	const char *v;
	size_t vlen;
	if (!find_key(s, n, "cniVersion", &v, &vlen))
		return;
	for (size_t k = 0; k < 3; k++)
		if (vlen == 5 && memcmp(v, known[k], 5) == 0)
			cni_version = known[k];
}

static int b64val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decode base64 (with '=' padding, as Python's b64encode writes it) in place; -1 if malformed. */
static long b64decode(char *s, size_t n)
{
	if (n % 4)
		return -1;
	size_t o = 0;
	for (size_t i = 0; i < n; i += 4) {
		int v[4], pad = 0;
		for (int k = 0; k < 4; k++) {
			if (s[i + k] == '=' && i + 4 == n && k >= 2) {
				v[k] = 0;
				pad++;
			} else if (pad || (v[k] = b64val((unsigned char)s[i + k])) < 0) {
				return -1;
			}
		}
		unsigned long w = (unsigned long)v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3];
		s[o++] = (char)(w >> 16);
		if (pad < 2)
			s[o++] = (char)(w >> 8);
		if (pad < 1)
			s[o++] = (char)w;
	}
	return (long)o;
}

/* The content of the string field "key" in an error answer (JSON escapes kept as they are: it is
 * pasted into our own JSON string), or NULL. */
static const char *field(const char *line, const char *key, size_t *n)
{
	char pat[32];
	snprintf(pat, sizeof pat, "\"%s\":\"", key);
	const char *p = strstr(line, pat);
	if (!p)
		return NULL;
	p += strlen(pat);
	const char *q = p;
	while (*q && *q != '"')
		q += (q[0] == '\\' && q[1]) ? 2 : 1;
	*n = (size_t)(q - p);
	return p;
}

int main(void)
{
	/* 1. stdin, bounded */
	struct buf in = {0};
	for (;;) {
		grow(&in, 65536);
		ssize_t r = read(0, in.p + in.len, in.cap - in.len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			fail(IO_FAILURE, "cannot read the network configuration", "reading stdin failed: %s", strerror(errno));
		if (r == 0)
			break;
		in.len += (size_t)r;
		if (in.len > MAX_STDIN)
			fail(IO_FAILURE, "the network configuration is too large", "stdin holds more than %d bytes", MAX_STDIN);
	}
	find_version(in.p ? in.p : "", in.len);

	/* 2. the request: CNI_* variables and stdin */
	struct buf req = {0};
	puts_(&req, "{\"v\":1,\"id\":1,\"method\":\"cni.exec\",\"params\":{\"env\":{");
	int first = 1;
	for (char **e = environ; *e; e++) {
		const char *eq = strchr(*e, '=');
		if (!eq || !cni_variable(*e, (size_t)(eq - *e)))
			continue;
		if (strlen(eq + 1) > CNI_VALUE_MAX)
			fail(INVALID_ENVIRONMENT, "a CNI variable is too long", "%.*s is longer than %d bytes",
			     (int)(eq - *e), *e, CNI_VALUE_MAX);
		puts_(&req, first ? "\"" : ",\"");
		first = 0;
		put_escaped(&req, *e, (size_t)(eq - *e));
		puts_(&req, "\":\"");
		put_escaped(&req, eq + 1, strlen(eq + 1));
		puts_(&req, "\"");
	}
	puts_(&req, "},\"stdin\":\"");
	put_escaped(&req, in.p ? in.p : "", in.len);
	puts_(&req, "\"}}\n");
	if (req.len > MAX_LINE)
		fail(IO_FAILURE, "the network configuration is too large",
		     "the request to the agent would be %zu bytes; the agent takes at most %d (bytes outside ASCII count 6 each)",
		     req.len, MAX_LINE);

	/* 3. the agent: the configuration's agentSocket, else $NKFRAME_AGENT_SOCKET, else the
	 * default (as nkframe-cni does).  podman runs DEL from a cleanup process that does not
	 * carry the runtime's environment, so the configuration is the one place every command
	 * sees. */
	char conf_socket[sizeof(((struct sockaddr_un *)0)->sun_path)];
	const char *path = getenv("NKFRAME_AGENT_SOCKET");
	const char *v;
	size_t vlen;
	if (in.p && find_key(in.p, in.len, "agentSocket", &v, &vlen)) {
		if (vlen == 0 || v[0] != '/' || vlen >= sizeof conf_socket)
			fail(INVALID_CONFIG, "agentSocket is invalid",
			     "the configuration's agentSocket must be an absolute path of at most %zu bytes", sizeof conf_socket - 1);
		memcpy(conf_socket, v, vlen);
		conf_socket[vlen] = 0;
		path = conf_socket;
	}
	if (!path || !*path)
		path = DEFAULT_SOCKET;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof sa.sun_path)
		fail(INVALID_ENVIRONMENT, "NKFRAME_AGENT_SOCKET is invalid", "the socket path %s is longer than %zu bytes",
		     path, sizeof sa.sun_path - 1);
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		fail(INTERNAL, "cannot create a socket", "socket(AF_UNIX): %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int err = errno;
		const char *command = getenv("CNI_COMMAND");
		if (command && strcmp(command, "VERSION") == 0) {
			/* VERSION needs no agent (runtimes probe it before any agent may be reachable,
			 * e.g. podman validating a network whose agentSocket only ADD's environment
			 * names): the versions we speak, in the one asked for. */
			const char *v = "1.1.0";
			size_t vlen = 5;
			if (in.p)
				find_key(in.p, in.len, "cniVersion", &v, &vlen);
			printf("{\"cniVersion\": \"%.*s\", \"supportedVersions\": [\"0.4.0\", \"1.0.0\", \"1.1.0\"]}\n", (int)vlen, v);
			return 0;
		}
		if (command && strcmp(command, "STATUS") == 0 && err != EACCES && err != EPERM)
			fail(NOT_AVAILABLE, "the nkframe agent is not available", "cannot connect to the agent at %s: %s", path, strerror(err));
		if (err == EACCES || err == EPERM)
			fail(INTERNAL, "permission denied on the nkframe agent's socket",
			     "cannot connect to %s: the agent serves root only; run the runtime's CNI calls as root", path);
		if (err == ENOENT)
			fail(TRY_AGAIN_LATER, "the nkframe agent is not available",
			     "no agent socket at %s; start the agent (nkframe agent run) or set NKFRAME_AGENT_SOCKET", path);
		if (err == ECONNREFUSED)
			fail(TRY_AGAIN_LATER, "the nkframe agent is not available",
			     "no agent listens on %s (the socket of a stopped agent); start it: nkframe agent run", path);
		fail(TRY_AGAIN_LATER, "the nkframe agent is not available", "cannot connect to the agent at %s: %s", path, strerror(err));
	}
	struct timeval tv = {.tv_sec = ANSWER_TIMEOUT};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	/* A failed send is not the end: an agent that refuses us answers first and closes, and
	 * that answer says why.  MSG_NOSIGNAL: no SIGPIPE when it has closed. */
	for (size_t off = 0; off < req.len;) {
		ssize_t w = send(fd, req.p + off, req.len - off, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}

	/* 4. one answer line */
	struct buf ans = {0};
	char *nl = NULL;
	while (!nl) {
		grow(&ans, 65536);
		ssize_t r = recv(fd, ans.p + ans.len, ans.cap - ans.len - 1, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			fail(TRY_AGAIN_LATER, "the nkframe agent is not available", "the agent at %s did not answer within %d s", path, ANSWER_TIMEOUT);
		if (r < 0)
			fail(TRY_AGAIN_LATER, "the nkframe agent is not available", "lost the connection to the agent at %s: %s", path, strerror(errno));
		if (r == 0)
			fail(TRY_AGAIN_LATER, "the nkframe agent is not available", "the agent at %s closed the connection before it answered", path);
		nl = memchr(ans.p + ans.len, '\n', (size_t)r);
		ans.len += (size_t)r;
		if (!nl && ans.len > MAX_ANSWER)
			fail(INTERNAL, "the nkframe agent sent an invalid answer", "an answer longer than %d bytes", MAX_ANSWER);
	}
	close(fd);
	*nl = '\0';
	char *line = ans.p;

	static const char ok[] = "{\"v\":1,\"id\":1,\"ok\":true,\"result\":{\"exit\":";
	if (strncmp(line, ok, sizeof ok - 1) == 0) {
		char *p = line + sizeof ok - 1, *end;
		long rc = strtol(p, &end, 10);
		static const char mid[] = ",\"stdout\":\"";
		if (end != p && rc >= 0 && rc <= 255 && strncmp(end, mid, sizeof mid - 1) == 0) {
			char *b64 = end + sizeof mid - 1;
			char *q = strchr(b64, '"');
			long n = q && strcmp(q, "\"}}") == 0 ? b64decode(b64, (size_t)(q - b64)) : -1;
			if (n >= 0) {
				fwrite(b64, 1, (size_t)n, stdout);
				if (fflush(stdout) != 0)
					return 1;
				return (int)rc;
			}
		}
	}
	size_t n;
	const char *msg = field(line, "message", &n);
	if (strstr(line, "\"ok\":false") && msg)
		fail_raw(INTERNAL, "the nkframe agent refused the request", msg, n);
	struct buf d = {0};
	size_t ll = strlen(line);
	put_escaped(&d, line, ll < 200 ? ll : 200);
	fail_raw(INTERNAL, "the nkframe agent sent an invalid answer", d.p ? d.p : "", d.len);
}
