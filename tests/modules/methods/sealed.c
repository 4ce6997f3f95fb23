// SPDX-License-Identifier: GPL-2.0
/*
 * sealed: calls kallsyms_lookup_name() -- unexported since 5.7 -- through
 * klpsym.h, built beside methods.c for each method as sealed_<method>.ko.
 *
 * On kernels built with CONFIG_X86_KERNEL_IBT (Debian's 6.12 and 7.x),
 * vmlinux never takes kallsyms_lookup_name's address, so objtool lists its
 * ENDBR in .ibt_endbr_seal and the kernel poisons it at boot: an indirect
 * call would raise #CP on an IBT CPU.  The kallsyms and kprobe methods must
 * then refuse to load (the test reads the seal list from the vmlinux to
 * know); the klp method calls it directly and works everywhere.  Where it
 * is not sealed (6.1: no IBT) all three load and check the answer against
 * the exported init_task.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kallsyms.h>
#include <linux/sched/task.h>	/* init_task */
#include <klpsym.h>

KLPSYM_FUNC(kallsyms_lookup_name);

static int __init sealed_init(void)
{
	unsigned long got = klpsym(kallsyms_lookup_name)("init_task");
	unsigned long want = (unsigned long)&init_task;

	pr_info("klptest " KBUILD_MODNAME ": got=%px want=%px match=%d\n",
		(void *)got, (void *)want, got == want);
	return 0;
}

static void __exit sealed_exit(void)
{
}

klpsym_module_init(sealed_init);
module_exit(sealed_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: a function that IBT kernels seal");
