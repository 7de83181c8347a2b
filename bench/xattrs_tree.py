#!/usr/bin/env python3
"""Helpers of bench/xattrs.sh (the rootfs-attrs corpus).

  xattrs_tree.py label TREE            security.selinux on every file, directory, symlink and node
  xattrs_tree.py label-one TREE REL   the same for one path
  xattrs_tree.py image FILE            the OLD sparse image: 2 GiB logical, a few MiB of data
  xattrs_tree.py image-edit FILE       NEW's edit of that image: a few 4 KiB blocks + one new extent
  xattrs_tree.py dump TREE [EXCL]      every attribute of every entry (path, name, hex value), sorted;
                                       EXCL: a top-level name to leave out (ferry's state dir)
  xattrs_tree.py count TREE            entries and attributes per name, tab-separated
  xattrs_tree.py extents FILE          logical size, data bytes (SEEK_DATA/SEEK_HOLE), extents, allocated bytes

Labels follow the shape of a targeted-policy file_contexts (first matching rule wins), so a
path gets the same label in OLD and NEW and files NEW adds get the label of their directory.
"""
import os
import random
import re
import stat
import sys

# (regex on the path from the tree root, with a leading "/", type). First match wins.
RULES = [
    (r"/", "root_t"),
    (r"/(usr/)?s?bin/(ping|arping|tracepath)", "ping_exec_t"),
    (r"/(usr/)?s?bin/new[ug]idmap", "newrole_exec_t"),
    (r"/(usr/)?s?bin/(dpkg|dpkg-.*|apt|apt-get|apt-cache|apt-config|apt-key|apt-mark)", "dpkg_exec_t"),
    (r"/(usr/)?s?bin/(passwd|chage|chfn|chsh|gpasswd|expiry)", "passwd_exec_t"),
    (r"/(usr/)?s?bin/(login|su|sulogin)", "login_exec_t"),
    (r"/(usr/)?s?bin/(bash|dash|sh)", "shell_exec_t"),
    (r"/(usr/)?s?bin(/.*)?", "bin_t"),
    (r"/usr/libexec(/.*)?", "bin_t"),
    (r"/usr/lib/apt/methods(/.*)?", "bin_t"),
    (r"/usr/lib/dpkg(/.*)?", "bin_t"),
    (r"/(usr/)?lib(32|64|x32)?(/.*)?\.so(\.[^/]*)?", "lib_t"),
    (r"/(usr/)?lib(32|64|x32)?/(.*/)?ld-linux[^/]*", "ld_so_t"),
    (r"/(usr/)?lib(32|64|x32)?/modules(/.*)?", "modules_object_t"),
    (r"/(usr/)?lib(32|64|x32)?(/.*)?", "lib_t"),
    (r"/usr/share/man(/.*)?", "man_t"),
    (r"/usr/share/locale(/.*)?", "locale_t"),
    (r"/usr/share/zoneinfo(/.*)?", "locale_t"),
    (r"/usr/share/doc(/.*)?", "usr_t"),
    (r"/usr/src(/.*)?", "src_t"),
    (r"/usr(/.*)?", "usr_t"),
    (r"/opt(/.*)?", "usr_t"),
    (r"/etc/(shadow|gshadow|shadow-|gshadow-)", "shadow_t"),
    (r"/etc/(passwd|group|passwd-|group-)", "passwd_file_t"),
    (r"/etc/(localtime|timezone)", "locale_t"),
    (r"/etc/(ld\.so\.cache|ld\.so\.conf(\.d(/.*)?)?)", "ld_so_cache_t"),
    (r"/etc/(resolv\.conf|hosts|hostname|nsswitch\.conf|host\.conf)", "net_conf_t"),
    (r"/etc/pam\.d(/.*)?", "etc_t"),
    (r"/etc/security(/.*)?", "etc_t"),
    (r"/etc/apt(/.*)?", "etc_t"),
    (r"/etc/ssl/private(/.*)?", "cert_t"),
    (r"/etc/ssl(/.*)?", "cert_t"),
    (r"/etc/cron\.[^/]*(/.*)?", "system_cron_spool_t"),
    (r"/etc/init\.d(/.*)?", "initrc_exec_t"),
    (r"/etc(/.*)?", "etc_t"),
    (r"/var/lib/images(/.*)?", "virt_image_t"),
    (r"/var/lib/dpkg(/.*)?", "dpkg_var_lib_t"),
    (r"/var/lib/apt(/.*)?", "apt_var_lib_t"),
    (r"/var/lib/systemd(/.*)?", "init_var_lib_t"),
    (r"/var/lib(/.*)?", "var_lib_t"),
    (r"/var/log/(wtmp|btmp|lastlog)", "wtmp_t"),
    (r"/var/log(/.*)?", "var_log_t"),
    (r"/var/cache/apt(/.*)?", "apt_var_cache_t"),
    (r"/var/cache(/.*)?", "var_t"),
    (r"/var/spool/cron(/.*)?", "cron_spool_t"),
    (r"/var/spool/mail(/.*)?", "mail_spool_t"),
    (r"/var/mail(/.*)?", "mail_spool_t"),
    (r"/var/spool(/.*)?", "var_spool_t"),
    (r"/var/tmp(/.*)?", "tmp_t"),
    (r"/var/(run|lock)(/.*)?", "var_run_t"),
    (r"/var(/.*)?", "var_t"),
    (r"/run(/.*)?", "var_run_t"),
    (r"/tmp(/.*)?", "tmp_t"),
    (r"/root(/.*)?", "admin_home_t"),
    (r"/home", "home_root_t"),
    (r"/home/[^/]+(/.*)?", "user_home_dir_t"),
    (r"/boot(/.*)?", "boot_t"),
    (r"/srv(/.*)?", "var_t"),
    (r"/(mnt|media)(/.*)?", "mnt_t"),
    (r"/proc", "proc_t"),
    (r"/sys", "sysfs_t"),
    (r"/dev/null", "null_device_t"),
    (r"/dev/zero", "zero_device_t"),
    (r"/dev/(u?random)", "random_device_t"),
    (r"/dev/(tty|console|ptmx)", "devtty_t"),
    (r"/dev/full", "null_device_t"),
    (r"/dev(/.*)?", "device_t"),
    (r".*", "default_t"),
]
COMPILED = [(re.compile(r + r"\Z"), t) for r, t in RULES]


def label_of(rel):
    for rx, t in COMPILED:
        if rx.match(rel):
            return f"system_u:object_r:{t}:s0\0".encode()
    raise AssertionError(rel)


def walk(top, exclude=None):
    """Every path below top (and top itself), sorted, not following symlinks."""
    yield ""
    stack = [""]
    while stack:
        d = stack.pop()
        names = sorted(os.listdir(os.path.join(top, d) if d else top), reverse=True)
        for n in names:
            if not d and exclude and n == exclude:
                continue
            rel = f"{d}/{n}" if d else n
            yield rel
            if stat.S_ISDIR(os.lstat(os.path.join(top, rel)).st_mode):
                stack.append(rel)


def cmd_label(top):
    n = 0
    seen = {}
    for rel in walk(top):
        p = os.path.join(top, rel) if rel else top
        st = os.lstat(p)
        key = (st.st_dev, st.st_ino)
        lab = label_of("/" + rel)
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            # a hard-linked inode has one label: the first path (in sorted walk order) decides
            if key in seen:
                continue
            seen[key] = lab
        os.setxattr(p, "security.selinux", lab, follow_symlinks=False)
        n += 1
    print(f"labelled {n} inodes under {top}", file=sys.stderr)


MiB = 1 << 20
GiB = 1 << 30
# (offset, length) of the OLD image's data: a boot area, a superblock/metadata region, some
# file data in the middle and a backup area at the end (GPT-like). 4.5 MiB of 2 GiB.
OLD_EXTENTS = [(0, MiB), (64 * MiB, 2 * MiB), (GiB, MiB), (2 * GiB - MiB // 2, MiB // 2)]


def fill(rng, n):
    # half seeded random bytes (compressed/encrypted payloads), half text-like records
    # (metadata, logs): neither all-incompressible nor trivially compressible
    out = bytearray()
    words = [b"inode", b"block", b"extent", b"journal", b"superblock", b"bitmap", b"group",
             b"/usr/lib/x86_64-linux-gnu", b"libc.so.6", b"0x00000000", b"checksum", b"ok\n"]
    while len(out) < n:
        if rng.random() < 0.5:
            out += rng.randbytes(4096)
        else:
            out += b" ".join(rng.choice(words) for _ in range(600))[:4096].ljust(4096, b"\n")
    return bytes(out[:n])


def cmd_label_one(top, rel):
    os.setxattr(os.path.join(top, rel), "security.selinux", label_of("/" + rel), follow_symlinks=False)


def cmd_image(path):
    rng = random.Random(13)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(2 * GiB)
        for off, ln in OLD_EXTENTS:
            f.seek(off)
            f.write(fill(rng, ln))
    os.chmod(path, 0o600)


def cmd_image_edit(path):
    rng = random.Random(1313)
    with open(path, "r+b") as f:
        # 8 blocks of 4 KiB rewritten inside the existing extents
        for off in [0, 8192, 64 * MiB + 4096, 64 * MiB + MiB, 65 * MiB + 512 * 1024,
                    GiB + 12288, GiB + MiB - 4096, 2 * GiB - 4096]:
            f.seek(off)
            f.write(rng.randbytes(4096))
        # and one new 256 KiB extent where the hole was (the guest wrote a new file)
        f.seek(1536 * MiB)
        f.write(fill(rng, 256 * 1024))


def cmd_dump(top, exclude=None):
    out = sys.stdout
    for rel in walk(top, exclude):
        p = os.path.join(top, rel) if rel else top
        for name in sorted(os.listxattr(p, follow_symlinks=False)):
            v = os.getxattr(p, name, follow_symlinks=False)
            out.write(f"/{rel}\t{name}\t{v.hex()}\n")


def cmd_count(top):
    entries = 0
    names = {}
    for rel in walk(top):
        p = os.path.join(top, rel) if rel else top
        entries += 1
        for name in os.listxattr(p, follow_symlinks=False):
            names[name] = names.get(name, 0) + 1
    print(f"entries\t{entries}")
    for k in sorted(names):
        print(f"{k}\t{names[k]}")


def cmd_extents(path):
    st = os.stat(path)
    data = 0
    ext = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while off < st.st_size:
            try:
                s = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            e = os.lseek(fd, s, os.SEEK_HOLE)
            data += e - s
            ext += 1
            off = e
    finally:
        os.close(fd)
    print(f"size={st.st_size} data={data} extents={ext} allocated={st.st_blocks * 512}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"label": cmd_label, "label-one": cmd_label_one, "image": cmd_image, "image-edit": cmd_image_edit, "dump": cmd_dump,
     "count": cmd_count, "extents": cmd_extents}[cmd](*args)


if __name__ == "__main__":
    main()
