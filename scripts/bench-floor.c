/* The floor under `gpt --root TREE iommu`: the same system calls gpt makes on a synthetic
 * tree, in C, and nothing else (no parsing, no names, no output but a count).
 *
 *   bench-floor TREE PCI_IDS THREADS [norev] [links]
 *
 * Per device: openat2 of sys/bus/pci/devices/ADDR (O_PATH, RESOLVE_IN_ROOT), openat + read +
 * close of `uevent` and of `revision`, close. Per IOMMU group: openat2 of its `devices`
 * folder, getdents64 to the end, close. Then pci.ids read whole in 64 KiB pieces.
 * THREADS = 1: all of it in one thread; 3: the devices split over two threads while the
 * groups and pci.ids are read in the main thread, as gpt does from 48 devices on.
 * What reading less would save (neither is what gpt does): `norev` leaves out `revision`;
 * `links` reads each device's `iommu_group` link instead of listing every group.
 * scripts/bench.sh builds it with `cc -O2 -pthread` and times it next to gpt. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_NAMES 16384
#define NAME_LEN 64

struct dirent64 {
  unsigned long ino;
  long off;
  unsigned short reclen;
  unsigned char type;
  char name[];
};

static int root, no_revision, group_links;
/* Opens and reads that failed: any makes the run fail, so a wrong tree cannot pass for fast. */
static int failures;

static void failed(void) { __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED); }

static int open_in_root(const char *path, long flags) {
  struct open_how how = {
      .flags = flags | O_CLOEXEC,
      .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
  };
  /* The kernel answers EAGAIN when a rename or mount anywhere on the machine raced a `..`
   * of the walk (busy build machines see it every few runs): try again, as the man page says. */
  int fd, tries = 0;
  do
    fd = syscall(SYS_openat2, root, path, &how, sizeof how);
  while (fd < 0 && errno == EAGAIN && ++tries < 8);
  return fd;
}

/* The entries of a folder (without . and ..) into names; their number. */
static int list(const char *path, char (*names)[NAME_LEN], int max) {
  char buf[16384];
  int fd = open_in_root(path, O_RDONLY | O_DIRECTORY), n = 0, got;
  if (fd < 0) {
    failed();
    return 0;
  }
  while ((got = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0)
    for (int at = 0; at < got;) {
      struct dirent64 *e = (struct dirent64 *)(buf + at);
      if (e->name[0] != '.' && n < max)
        snprintf(names[n++], NAME_LEN, "%s", e->name);
      at += e->reclen;
    }
  close(fd);
  return n;
}

static void read_file_at(int dir, const char *name) {
  char buf[1024];
  int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    failed();
    return;
  }
  if (read(fd, buf, sizeof buf) <= 0)
    failed();
  close(fd);
}

static char devices[MAX_NAMES][NAME_LEN];
static char groups[MAX_NAMES][NAME_LEN];

struct range {
  int from, to;
};

static void *read_devices(void *arg) {
  struct range *r = arg;
  char path[256];
  for (int i = r->from; i < r->to; i++) {
    snprintf(path, sizeof path, "sys/bus/pci/devices/%.63s", devices[i]);
    int dir = open_in_root(path, O_PATH | O_DIRECTORY);
    if (dir < 0) {
      failed();
      continue;
    }
    read_file_at(dir, "uevent");
    if (!no_revision)
      read_file_at(dir, "revision");
    if (group_links) {
      char link[256];
      if (readlinkat(dir, "iommu_group", link, sizeof link) < 0)
        failed();
    }
    close(dir);
  }
  return NULL;
}

static int read_groups_and_ids(const char *ids) {
  static char members[256][NAME_LEN];
  char path[256];
  int n = list("sys/kernel/iommu_groups", groups, MAX_NAMES);
  for (int i = 0; i < n && !group_links; i++) {
    snprintf(path, sizeof path, "sys/kernel/iommu_groups/%.63s/devices", groups[i]);
    list(path, members, 256);
  }
  static char big[65536];
  int fd = open(ids, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    failed();
    return n;
  }
  while (read(fd, big, sizeof big) > 0)
    ;
  close(fd);
  return n;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: bench-floor TREE PCI_IDS THREADS(1|3) [norev] [links]\n");
    return 2;
  }
  for (int i = 4; i < argc; i++) {
    if (!strcmp(argv[i], "norev"))
      no_revision = 1;
    else if (!strcmp(argv[i], "links"))
      group_links = 1;
    else {
      fprintf(stderr, "bench-floor: unknown option '%s' (norev, links)\n", argv[i]);
      return 2;
    }
  }
  root = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) {
    perror(argv[1]);
    return 1;
  }
  int threads = atoi(argv[3]);
  int n = list("sys/bus/pci/devices", devices, MAX_NAMES), groups_read;
  if (threads == 3) {
    struct range first = {0, n / 2}, second = {n / 2, n};
    pthread_t a, b;
    pthread_create(&a, NULL, read_devices, &first);
    pthread_create(&b, NULL, read_devices, &second);
    groups_read = read_groups_and_ids(argv[2]);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
  } else {
    struct range all = {0, n};
    read_devices(&all);
    groups_read = read_groups_and_ids(argv[2]);
  }
  printf("%d devices, %d groups\n", n, groups_read);
  if (failures) {
    fprintf(stderr, "bench-floor: %d opens or reads failed under %s\n", failures, argv[1]);
    return 1;
  }
  return 0;
}
