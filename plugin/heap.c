/* The process's heap while a pull copies messages.

   Every message a pull copies passes through buffers the size of the
   message (imapc's input and the mail's body buffer, in Dovecot's imapc
   code). With glibc's defaults a buffer over its mmap threshold, or the
   free top of the heap over its trim threshold, goes back to the kernel
   when freed, and the next message's buffer is faulted in again page by
   page: 40,000-60,000 page faults for a 10,000-message folder, about a
   tenth of the pull's CPU (docs/bench.md, "Lazy first SELECT"). While a
   pull runs the freed memory is kept for the next message; when the last
   pull of the process ends glibc's default thresholds are set again (fixed
   from then on: glibc stops adapting its mmap threshold once it is set)
   and what is free is returned, so an imap process does not keep a pull's
   memory for the rest of its session. A background step (one batch) holds
   it for its batch only. Peak memory is the same: it is what the largest
   message needs either way. Dovecot has no API for this; mallopt() is
   glibc's. */

#include "lib.h"
#include "ferry-plugin.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

/* a buffer up to this size comes from the heap, not its own mapping */
#define FERRY_HEAP_MMAP_THRESHOLD (4 * 1024 * 1024)
/* free memory kept at the top of the heap during a pull */
#define FERRY_HEAP_TRIM_THRESHOLD (16 * 1024 * 1024)
/* glibc's defaults (M_MMAP_THRESHOLD and M_TRIM_THRESHOLD in mallopt(3)) */
#define GLIBC_DEFAULT_THRESHOLD (128 * 1024)

static unsigned int ferry_heap_holds;

void ferry_heap_hold(void)
{
#ifdef __GLIBC__
	if (ferry_heap_holds++ == 0) {
		(void)mallopt(M_MMAP_THRESHOLD, FERRY_HEAP_MMAP_THRESHOLD);
		(void)mallopt(M_TRIM_THRESHOLD, FERRY_HEAP_TRIM_THRESHOLD);
	}
#endif
}

void ferry_heap_release(void)
{
#ifdef __GLIBC__
	i_assert(ferry_heap_holds > 0);
	if (--ferry_heap_holds == 0) {
		(void)mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD);
		(void)mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD);
		(void)malloc_trim(0);
	}
#endif
}
