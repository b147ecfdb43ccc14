/*
 * pg_branch's ProcessUtility hook entry point, in C.
 *
 * Every utility statement of every session passes through here. pg_branch
 * may take over CREATE DATABASE, and skips SECURITY LABEL FOR pg_branch
 * (below); everything else goes straight to the previous hook or to standard_ProcessUtility(),
 * from this C frame, with exactly the arguments we received.
 *
 * Why C: a Rust hook (pgrx's #[pg_guard]) calls core through pgrx's FFI
 * guard, which catches every ERROR core raises (sigsetjmp), copies a few of
 * its fields (SQLSTATE, message, detail, hint) and raises a new ERROR from
 * those. CONTEXT, the cursor position, the internal query and the schema,
 * table, column, datatype and constraint names were lost, and pgrx's panic
 * hook put a Rust backtrace into DETAIL when RUST_BACKTRACE was set. Here
 * the pass-through path catches nothing: an ERROR raised below
 * standard_ProcessUtility() longjmps through this frame, as through any C
 * extension's hook, and reaches the client untouched.
 *
 * Why that is sound: between core's PG_TRY frames there is only this
 * function, which owns nothing: no memory context is switched, no resource
 * owner, lock, buffer pin or file is acquired, no global is changed (the
 * capture callback below is pushed only for CREATE DATABASE, and a longjmp
 * past it is fine because whoever catches an error restores
 * error_context_stack, as every PG_CATCH and PostgresMain do). Whatever
 * core allocated or acquired belongs to core's memory contexts and resource
 * owners, which transaction abort cleans up as it does without pg_branch.
 * No Rust frame is on the stack of a pass-through statement.
 *
 * SECURITY LABEL FOR pg_branch: skipped with a NOTICE, here in C. pg_branch's
 * registry is the label of that provider on each branch (src/registry.rs),
 * and only the CREATE DATABASE that makes a branch writes it. The statement
 * comes from a restored pg_dumpall, whose databases are logical copies and
 * not branches of anything, so skipping it keeps the restore going without
 * giving it a false parent.
 *
 * CREATE DATABASE: pg_branch_createdb() (Rust, src/hook.rs) decides whether
 * the statement is a branch and, if so, makes it. Rust never lets an ERROR
 * longjmp over its frames: pgrx turns it into a Rust unwind. So that the
 * error still reaches the client whole, an error context callback, run by
 * errfinish() before the longjmp, keeps a full copy (CopyErrorData) of the
 * latest ERROR raised while Rust runs; Rust unwinds, runs its cleanup,
 * returns the ErrorData to raise (that copy when it is the error that ended
 * the statement, else one built from what Rust knows), and we raise it here
 * with ThrowErrorData(), once all Rust frames are gone. ThrowErrorData()
 * runs the callbacks that are outside us again, so CONTEXT is what core
 * would give.
 */
#include "postgres.h"

#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "parser/parse_node.h"
#include "tcop/utility.h"
#include "utils/elog.h"
#include "utils/memutils.h"

/* src/hook.rs */
extern bool pg_branch_createdb(PlannedStmt *pstmt, const char *queryString,
							   ProcessUtilityContext context,
							   QueryEnvironment *queryEnv, ErrorData **error);

void		pg_branch_install_hook(void);
ErrorData  *pg_branch_captured_error(void);
ErrorData  *pg_branch_make_error(int sqlerrcode, const char *message,
								 const char *detail, const char *hint,
								 const char *filename, int lineno,
								 const char *funcname);
void		pg_branch_report(int elevel, int sqlerrcode, const char *message,
							 const char *detail, const char *hint,
							 ParseState *pstate, int location,
							 const char *filename, int lineno,
							 const char *funcname);

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/*
 * Errors of the CREATE DATABASE under way: the latest ERROR copied by
 * capture_error(), and the ErrorData Rust builds. Reset at the start of
 * the next CREATE DATABASE we look at, long after the error was sent.
 */
static MemoryContext capture_cxt = NULL;
static ErrorData *captured = NULL;

/*
 * Error context callback, run by errfinish() for every message raised while
 * Rust handles a CREATE DATABASE, before an ERROR longjmps to pgrx's guard.
 * errfinish() runs us in ErrorContext, which CopyErrorData() must not copy
 * into (FlushErrorState resets it); we copy into our own context.
 */
static void
capture_error(void *arg)
{
	MemoryContext old;
	ErrorData  *edata;

	old = MemoryContextSwitchTo(capture_cxt);
	edata = CopyErrorData();
	MemoryContextSwitchTo(old);
	if (edata->elevel != ERROR)
	{
		FreeErrorData(edata);
		return;
	}
	if (captured != NULL)
		FreeErrorData(captured);
	captured = edata;
}

/* The latest ERROR raised while Rust ran, or NULL. */
ErrorData *
pg_branch_captured_error(void)
{
	return captured;
}

/* An ERROR for ThrowErrorData(), allocated in capture_cxt. */
ErrorData *
pg_branch_make_error(int sqlerrcode, const char *message, const char *detail,
					 const char *hint, const char *filename, int lineno,
					 const char *funcname)
{
	ErrorData  *edata = MemoryContextAllocZero(capture_cxt, sizeof(ErrorData));

	edata->elevel = ERROR;
	edata->output_to_server = true;
	edata->output_to_client = true;
	edata->sqlerrcode = sqlerrcode;
	edata->message = MemoryContextStrdup(capture_cxt, message);
	if (detail)
		edata->detail = MemoryContextStrdup(capture_cxt, detail);
	if (hint)
		edata->hint = MemoryContextStrdup(capture_cxt, hint);
	edata->filename = MemoryContextStrdup(capture_cxt, filename);
	edata->lineno = lineno;
	edata->funcname = MemoryContextStrdup(capture_cxt, funcname);
	edata->assoc_context = capture_cxt;
	return edata;
}

/*
 * ereport() for pg_branch's own messages, with the cursor position of
 * `location` in pstate's query text when pstate is not NULL (as
 * parser_errposition). filename and funcname must outlive the report (Rust
 * passes static strings): CopyErrorData() keeps the pointers.
 */
void
pg_branch_report(int elevel, int sqlerrcode, const char *message,
				 const char *detail, const char *hint, ParseState *pstate,
				 int location, const char *filename, int lineno,
				 const char *funcname)
{
	if (errstart(elevel, NULL))
	{
		errcode(sqlerrcode);
		errmsg_internal("%s", message);
		if (detail)
			errdetail_internal("%s", detail);
		if (hint)
			errhint("%s", hint);
		if (pstate)
			parser_errposition(pstate, location);
		errfinish(filename, lineno, funcname);
	}
	if (elevel >= ERROR)
		pg_unreachable();
}

/*
 * A CREATE DATABASE: let Rust decide and maybe make it. Returns whether it
 * did; raises the statement's ERROR, if any, once Rust has returned.
 */
static bool
branch_createdb(PlannedStmt *pstmt, const char *queryString,
				ProcessUtilityContext context, QueryEnvironment *queryEnv)
{
	ErrorContextCallback capture;
	ErrorData  *error = NULL;
	bool		handled;

	if (capture_cxt == NULL)
		capture_cxt = AllocSetContextCreate(TopMemoryContext,
											"pg_branch errors",
											ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(capture_cxt);
	captured = NULL;

	capture.callback = capture_error;
	capture.arg = NULL;
	capture.previous = error_context_stack;
	error_context_stack = &capture;

	handled = pg_branch_createdb(pstmt, queryString, context, queryEnv, &error);

	error_context_stack = capture.previous;
	captured = NULL;
	if (error != NULL)
	{
		ThrowErrorData(error);	/* elevel is ERROR: does not return */
		pg_unreachable();
	}
	return handled;
}

/* Whether a SECURITY LABEL statement names pg_branch's provider. */
static bool
is_registry_label(SecLabelStmt *stmt)
{
	return stmt->provider != NULL && strcmp(stmt->provider, "pg_branch") == 0;
}

static void
pg_branch_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
						 bool readOnlyTree, ProcessUtilityContext context,
						 ParamListInfo params, QueryEnvironment *queryEnv,
						 DestReceiver *dest, QueryCompletion *qc)
{
	if (IsA(pstmt->utilityStmt, SecLabelStmt) &&
		is_registry_label((SecLabelStmt *) pstmt->utilityStmt))
	{
		ereport(NOTICE,
				(errmsg("skipping security label of provider \"pg_branch\""),
				 errdetail("pg_branch records a branch when CREATE DATABASE makes it; "
						   "a label given by SQL, as a restored dump gives it, "
						   "is not such a record.")));
		return;
	}

	if (IsA(pstmt->utilityStmt, CreatedbStmt) &&
		branch_createdb(pstmt, queryString, context, queryEnv))
		return;

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/* From _PG_init: chain to whatever hook was installed before us. */
void
pg_branch_install_hook(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = pg_branch_ProcessUtility;
}
