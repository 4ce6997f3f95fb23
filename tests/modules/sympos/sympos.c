// SPDX-License-Identifier: GPL-2.0
/*
 * sympos: a reference to a name that vmlinux's kallsyms holds more than once.
 *
 * c_start is the seq_file ->start callback of several /proc files; each is a
 * STATIC function in its own file (in Debian bookworm's 6.1 kallsyms there
 * are three "t c_start" entries: arch/x86/kernel/cpu/proc.c for
 * /proc/cpuinfo first, then two others in higher text).  A module cannot
 * name "the second c_start" in C, so klpsym needs to be told:
 *
 *     klpsym convert sympos.ko --sympos c_start=2 ...
 *
 * which becomes the symbol .klp.sym.vmlinux.c_start,2: the livepatch code
 * picks the 2nd vmlinux kallsyms entry called c_start.  Without --sympos
 * klpsym refuses and lists the candidates.
 *
 * The function is never called (it expects a live seq_file); the module
 * only prints its address, which the test compares with the 2nd c_start
 * line of /proc/kallsyms read in the same boot (KASLR moves it each boot).
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/seq_file.h>

/* The real prototype; the definition we get is chosen by --sympos. */
void *c_start(struct seq_file *m, loff_t *pos);

static int __init sympos_init(void)
{
	pr_info("klptest sympos: name=c_start addr=%px\n", c_start);
	return 0;
}

static void __exit sympos_exit(void)
{
}

module_init(sympos_init);
module_exit(sympos_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: a duplicated static name resolved with --sympos");
