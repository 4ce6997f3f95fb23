// SPDX-License-Identifier: GPL-2.0
/*
 * data_rw: read AND write an unexported variable, with an effect visible
 * from user space.
 *
 * dmesg_restrict (kernel/printk/printk.c, declared in <linux/printk.h>) is
 * the int behind /proc/sys/kernel/dmesg_restrict.  It is not exported (see
 * the headers' Module.symvers) and is only in kallsyms because Debian sets
 * CONFIG_KALLSYMS_ALL=y.  The module prints the value it reads, then stores
 * the other boolean value; the test's init script reads the sysctl before
 * and after insmod, so the test compares what the module saw and wrote with
 * what user space saw.  (dmesg_restrict rather than kptr_restrict: setting
 * kptr_restrict would hide the /proc/kallsyms addresses other tests read;
 * dmesg_restrict=1 does not stop root from reading the log.)
 *
 * The accesses become R_X86_64_PC32 relocations against dmesg_restrict in
 * .text/.init.text; &dmesg_restrict is printed too (R_X86_64_32S) so the test
 * can check it against /proc/kallsyms.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/printk.h>	/* extern int dmesg_restrict; */

static int __init data_rw_init(void)
{
	int old = READ_ONCE(dmesg_restrict);
	int new = !old;

	WRITE_ONCE(dmesg_restrict, new);
	pr_info("klptest data_rw: addr=%px old=%d new=%d readback=%d\n",
		&dmesg_restrict, old, new, READ_ONCE(dmesg_restrict));
	return 0;
}

static void __exit data_rw_exit(void)
{
	pr_info("klptest data_rw: exit value=%d\n", READ_ONCE(dmesg_restrict));
}

module_init(data_rw_init);
module_exit(data_rw_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: read and write the unexported dmesg_restrict");
