// SPDX-License-Identifier: GPL-2.0
/* method_build: one klpsym.h module for 'klpsym build --method ...' (tests/kbuild). */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kallsyms.h>
#include <linux/printk.h>	/* dmesg_restrict */
#include <klpsym.h>

KLPSYM_FUNC(kallsyms_lookup_name);
KLPSYM_VAR(dmesg_restrict);

static int __init mb_init(void)
{
	pr_info("klptest mb: init_task=%px dmesg_restrict=%d\n",
		(void *)klpsym(kallsyms_lookup_name)("init_task"), *klpsym(dmesg_restrict));
	return 0;
}

static void __exit mb_exit(void)
{
}

klpsym_module_init(mb_init);
module_exit(mb_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: klpsym build --method");
