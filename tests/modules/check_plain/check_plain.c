// SPDX-License-Identifier: GPL-2.0
/*
 * check_plain: uses only ordinary exports (_printk, jiffies), so it loads.
 * tests/e2e/test_check_qemu.py also loads copies of it with one thing
 * changed: a __versions CRC, the vermagic, the licence.
 */
#include <linux/module.h>
#include <linux/jiffies.h>

static int __init check_plain_init(void)
{
	pr_info("klptest check_plain: jiffies=%lu\n", jiffies);
	return 0;
}

static void __exit check_plain_exit(void)
{
}

module_init(check_plain_init);
module_exit(check_plain_exit);
MODULE_LICENSE("GPL");
