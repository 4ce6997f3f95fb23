// SPDX-License-Identifier: GPL-2.0
/*
 * init_exit: unexported symbols referenced from __init code (.init.text,
 * freed after init) and from __exit code (.exit.text, run by rmmod).
 *
 *   init: kallsyms_lookup_name("init_task") == &init_task (exported)
 *   exit: lookup_symbol_name(&init_task) gives back the name "init_task"
 *
 * Both functions live in kernel/kallsyms.c and are not exported.  The test
 * loads the module, rmmods it, and expects both lines in the kernel log.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kallsyms.h>
#include <linux/sched/task.h>	/* init_task */

static int __init init_exit_init(void)
{
	unsigned long got = kallsyms_lookup_name("init_task");
	unsigned long want = (unsigned long)&init_task;

	pr_info("klptest init_exit: phase=init got=%px want=%px match=%d\n",
		(void *)got, (void *)want, got == want && got != 0);
	return 0;
}

static void __exit init_exit_exit(void)
{
	char name[KSYM_NAME_LEN] = "";
	int ret = lookup_symbol_name((unsigned long)&init_task, name);

	pr_info("klptest init_exit: phase=exit ret=%d name=%s match=%d\n",
		ret, name, ret == 0 && strcmp(name, "init_task") == 0);
}

module_init(init_exit_init);
module_exit(init_exit_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpsym test: unexported symbols used from __init and __exit code");
