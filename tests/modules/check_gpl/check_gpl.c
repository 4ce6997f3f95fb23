// SPDX-License-Identifier: GPL-2.0
/*
 * check_gpl: uses ktime_get, an EXPORT_SYMBOL_GPL of vmlinux.  As built
 * (GPL) it loads; the test's copy with MODULE_LICENSE("Proprietary") in its
 * .modinfo cannot see the symbol: "Unknown symbol ktime_get (err -2)".
 */
#include <linux/module.h>
#include <linux/timekeeping.h>

static int __init check_gpl_init(void)
{
	pr_info("klptest check_gpl: ktime=%lld\n", (long long)ktime_get());
	return 0;
}

static void __exit check_gpl_exit(void)
{
}

module_init(check_gpl_init);
module_exit(check_gpl_exit);
MODULE_LICENSE("GPL");
