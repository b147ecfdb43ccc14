/*
 * Which database OIDs were dropped after the last completed checkpoint.
 *
 * A branch may wait only for a checkpoint to *start* before it commits
 * (src/wal.rs), because crash recovery then keeps the branch's directory as
 * it finds it. There is one exception: DROP DATABASE checkpoints before it
 * logs the drop, so a drop record can lie past the last completed
 * checkpoint, and crash recovery replays it. If a branch has reused that
 * database's OID (OID = N, the OID counter coming round, or a counter value
 * that a database had been given explicitly), replaying the drop removes
 * the branch's directory (the same path) and replaying the branch's record
 * then clones the template as it is on disk after the crash. Such a branch
 * must wait for the whole checkpoint, as core's FILE_COPY always does.
 *
 * This file tells which branches those are. An object-access hook notes a
 * DROP DATABASE in the backend that runs it; before that transaction
 * commits (its drop record is written by then), the OID goes into a small
 * table in shared memory with the current WAL insert position, which is
 * past the drop record. An entry matters while the last completed
 * checkpoint's redo pointer is before that position; after that its slot
 * is free. DROP DATABASE itself waits for a checkpoint, so entries expire
 * within one checkpoint of each other and the table rarely holds more than
 * a few. Should it be full, the position of the drop it could not keep is
 * remembered instead, and every branch waits for a whole checkpoint until
 * a checkpoint has passed it.
 *
 * Drops before this server started, replayed by a recovery that did not
 * end with a completed checkpoint (a promotion), are not in the table:
 * the first question after start-up takes the current insert position as
 * such an unknown drop, so branches wait for a whole checkpoint until one
 * has completed after it.
 *
 * Everything here is plain C: the hook runs inside every DROP of every
 * object, and the previous hook, whose ERROR must reach the client as core
 * raised it, is called from a C frame.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#define DROPS_SLOTS 64

typedef struct DroppedDatabase
{
	Oid			db;				/* InvalidOid: a free slot */
	XLogRecPtr	lsn;			/* WAL insert position when it was kept */
} DroppedDatabase;

typedef struct RecentDrops
{
	slock_t		mutex;
	bool		started;		/* set by the first question after start-up */
	XLogRecPtr	unknown;		/* a drop at or before this position is not
								 * in the table */
	DroppedDatabase slots[DROPS_SLOTS];
} RecentDrops;

void		pg_branch_install_drop_tracking(void);
bool		pg_branch_oid_may_be_reused(Oid db);

static RecentDrops *drops = NULL;
static Oid	pending_drop = InvalidOid;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static object_access_hook_type prev_object_access_hook = NULL;

/* The redo pointer of the last completed checkpoint (pg_control's). */
static XLogRecPtr
last_completed_redo(void)
{
	XLogRecPtr	redo;
	TimeLineID	tli;

	GetOldestRestartPoint(&redo, &tli);
	return redo;
}

static void
drops_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(RecentDrops)));
}

static void
drops_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	drops = ShmemInitStruct("pg_branch recent drops", sizeof(RecentDrops), &found);
	if (!found)
	{
		memset(drops, 0, sizeof(RecentDrops));
		SpinLockInit(&drops->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Keep `db`, dropped by a transaction about to commit. */
static void
keep_drop(Oid db)
{
	XLogRecPtr	lsn = GetXLogInsertRecPtr();
	XLogRecPtr	redo = last_completed_redo();
	DroppedDatabase *free_slot = NULL;

	SpinLockAcquire(&drops->mutex);
	for (int i = 0; i < DROPS_SLOTS; i++)
	{
		DroppedDatabase *s = &drops->slots[i];

		if (s->db == db || s->db == InvalidOid || s->lsn <= redo)
		{
			free_slot = s;
			if (s->db == db)
				break;
		}
	}
	if (free_slot)
	{
		free_slot->db = db;
		free_slot->lsn = lsn;
	}
	else if (drops->unknown < lsn)
		drops->unknown = lsn;
	SpinLockRelease(&drops->mutex);
}

/*
 * Whether a database with OID `db` may have been dropped after the last
 * completed checkpoint (or we cannot tell).
 */
bool
pg_branch_oid_may_be_reused(Oid db)
{
	XLogRecPtr	redo = last_completed_redo();
	XLogRecPtr	now = GetXLogInsertRecPtr();
	bool		result;

	SpinLockAcquire(&drops->mutex);
	if (!drops->started)
	{
		drops->started = true;
		drops->unknown = now;
	}
	result = drops->unknown > redo;
	for (int i = 0; i < DROPS_SLOTS && !result; i++)
		result = drops->slots[i].db == db && drops->slots[i].lsn > redo;
	SpinLockRelease(&drops->mutex);
	return result;
}

static void
drops_object_access(ObjectAccessType access, Oid classId, Oid objectId,
					int subId, void *arg)
{
	/* DROP DATABASE cannot run in a transaction block: one per transaction. */
	if (access == OAT_DROP && classId == DatabaseRelationId)
		pending_drop = objectId;
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
}

static void
drops_xact_callback(XactEvent event, void *arg)
{
	if (pending_drop == InvalidOid)
		return;
	/*
	 * Before the commit record, so that no branch can see the database gone
	 * and not yet kept here; dropdb() wrote the drop record already. A
	 * commit that fails after this leaves a harmless entry: one branch waits
	 * for a whole checkpoint.
	 */
	if (event == XACT_EVENT_PRE_COMMIT)
		keep_drop(pending_drop);
	if (event == XACT_EVENT_PRE_COMMIT || event == XACT_EVENT_ABORT)
		pending_drop = InvalidOid;
}

/* From _PG_init, while the postmaster loads preload libraries. */
void
pg_branch_install_drop_tracking(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = drops_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = drops_shmem_startup;
	prev_object_access_hook = object_access_hook;
	object_access_hook = drops_object_access;
	RegisterXactCallback(drops_xact_callback, NULL);
}
