/* memcpy, memmove and memset for the whole module (libpython's calls land here too); included by shim.c.
 * zig's compiler-rt versions copy a word per loop turn (~2.5 VM instructions per byte): every body or header map the host hands
 * over is copied at least once. Longer copies use the bulk-memory instructions (one instruction; in V8 a native
 * memmove); short ones stay loops, as memory.copy has a fixed cost. no_builtin keeps clang from turning the
 * loops back into calls to these very functions. */
#define PW_BULK_MIN 32
__attribute__((no_builtin("memcpy", "memmove", "memset"))) void *memcpy(void *restrict dst, const void *restrict src,
                                                                        size_t n) {
  if (n >= PW_BULK_MIN) {
    __builtin_memcpy(dst, src, n); /* memory.copy */
    return dst;
  }
  unsigned char *d = dst;
  const unsigned char *s = src;
  while (n--) *d++ = *s++;
  return dst;
}

__attribute__((no_builtin("memcpy", "memmove", "memset"))) void *memmove(void *dst, const void *src, size_t n) {
  if (n >= PW_BULK_MIN) {
    __builtin_memmove(dst, src, n); /* memory.copy handles overlap */
    return dst;
  }
  unsigned char *d = dst;
  const unsigned char *s = src;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    while (n--) d[n] = s[n];
  }
  return dst;
}

__attribute__((no_builtin("memcpy", "memmove", "memset"))) void *memset(void *dst, int c, size_t n) {
  if (n >= PW_BULK_MIN) {
    __builtin_memset(dst, c, n); /* memory.fill */
    return dst;
  }
  unsigned char *d = dst;
  while (n--) *d++ = (unsigned char)c;
  return dst;
}


/* realloc and calloc replace zig's (lib/c/malloc.zig), whose copy and fill run a byte at a time (~15 VM
 * instructions per byte: growing a 16 KiB buffer cost 245k). Growth always moves the block (malloc, copy, free):
 * correct whatever the allocator's size classes are; shrinking keeps it. */
size_t malloc_usable_size(void *p);

void *realloc(void *p, size_t n) {
  if (!p) return malloc(n);
  if (!n) {
    free(p);
    return NULL;
  }
  size_t old = malloc_usable_size(p);
  if (n <= old) return p;
  void *q = malloc(n);
  if (!q) return NULL;
  memcpy(q, p, old);
  free(p);
  return q;
}

void *calloc(size_t count, size_t size) {
  size_t n;
  if (__builtin_mul_overflow(count, size, &n)) return NULL;
  void *p = malloc(n);
  if (p) memset(p, 0, n);
  return p;
}
