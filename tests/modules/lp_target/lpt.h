/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lp_target's values, which tests/vm/test_livepatch_vm.py reads from this
 * file (#define NAME 0x...) as the truth the livepatches must print.
 */
#ifndef LPT_H
#define LPT_H

#define LPT_HOMONYM_MAIN	0x1111	/* lpt_homonym in lpt_main.c */
#define LPT_HOMONYM_AUX		0x2222	/* lpt_homonym in lpt_aux.c */
#define LPT_HOMONYM_FN_MAIN	0x1001	/* lpt_homonym_fn() in lpt_main.c */
#define LPT_HOMONYM_FN_AUX	0x2002	/* lpt_homonym_fn() in lpt_aux.c */
#define LPT_PRINTK_TIME		0x5eed	/* printk_time: vmlinux has one too */
#define LPT_DATA		0xda7a	/* lpt_data, in .data */
#define LPT_RO			0x4e4d	/* lpt_ro, in .rodata */
#define LPT_RM			0x4ead	/* lpt_rm, in .data..read_mostly */
#define LPT_COUNT_START		100	/* the function-local static count */

void lpt_aux_report(void);

#endif
