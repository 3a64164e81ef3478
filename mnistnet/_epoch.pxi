# The epoch: gathering batches, stretches of batches on one thread or on a team of threads,
# the step skeleton every team runs, and the timed probes that choose between one thread and
# a team (included by _kernels.pyx).
#
# The rows team (any net): phase 1 of a step splits the batch's rows (each sample's forward
# and deltas are its own); phase 2 splits each kernel gradient by its rows (outputs), every
# thread summing over the whole batch in the same order. Nothing is split along a reduction
# axis, so the weights are the same bits at any thread count. Dense nets trained by SGD have
# two faster teams of their own (_dense.pxi); all three run the same skeleton, team_steps.

cdef inline void gather_rows(float* dst, const float* src, const long long* rows,
                             Py_ssize_t n, Py_ssize_t width) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(n):
        memcpy(dst + r * width, src + rows[r] * width, width * sizeof(float))


cdef bint gather_inputs(float* dst, const EpochArgs* args, const long long* rows,
                        Py_ssize_t n, Py_ssize_t width, Py_ssize_t k0,
                        Py_ssize_t k1) noexcept nogil:
    # Columns k0..k1 of rows of the epoch's inputs (row width `width`), packed: dst (n,
    # k1 - k0), each row read as the net takes it (read_inputs: uint8 pixels become floats,
    # a leading Rescaling applies). Returns whether they are all finite (the epoch's check
    # of its inputs).
    cdef Py_ssize_t r
    cdef bint finite = True
    for r in range(n):
        finite &= read_inputs(dst + r * (k1 - k0), &args.inputs, rows[r] * width + k0, k1 - k0)
    return finite


cdef inline void prefetch_inputs_later(const EpochArgs* args, const long long* rows,
                                       Py_ssize_t n, Py_ssize_t width, Py_ssize_t k0,
                                       Py_ssize_t k1) noexcept nogil:
    # Columns k0..k1 of the next batch's input rows, fetched during this step
    # (mn_prefetch_rows_later).
    if args.inputs.pixels != NULL:
        mn_prefetch_bytes_later(args.inputs.pixels, width, rows, n, k0, k1)
    else:
        mn_prefetch_columns_later(args.inputs.x, width, rows, n, k0, k1)


cdef inline Py_ssize_t batch_rows(const EpochArgs* args, Py_ssize_t start) noexcept nogil:
    # Rows of the batch starting at `start` (the last batch may be smaller).
    return args.batch_size if args.N - start > args.batch_size else args.N - start


cdef inline bint time_to_check_signals(double* last_check) noexcept nogil:
    cdef double now = mn_seconds()
    if now - last_check[0] < SIGNAL_CHECK_INTERVAL:
        return False
    last_check[0] = now
    return True


cdef inline void count_step(EpochResult* res, double loss_sum, Py_ssize_t correct,
                            Py_ssize_t n) noexcept nogil:
    res.loss_sum += loss_sum
    res.correct += correct
    res.seen += n
    res.batches += 1


cdef Py_ssize_t serial_stretch(const Net* net, const EpochArgs* args, Py_ssize_t start,
                               Py_ssize_t end, EpochResult* res,
                               double* last_check) noexcept nogil:
    """Batches starting at rows start.. < end on the calling thread. Returns the next start."""
    cdef Py_ssize_t L = net.n_layers, C0 = width(net, 0), OC = net.n_outputs, n
    cdef float* targets = net_acts(net, L + 1)
    cdef double loss
    cdef Step s
    end = min(end, args.N)  # past N a batch would have no rows (and a NaN mean loss)
    mn_set_thread_cap(1)
    while start < end and res.status == EPOCH_DONE:
        n = batch_rows(args, start)
        step_for(args, start, &s)
        if not gather_inputs(net.a, args, args.perm + start, n, C0, 0, C0):
            res.status = EPOCH_NONFINITE_INPUT  # before this batch's step
            break
        gather_rows(targets, args.y, args.perm + start, n, OC)
        # The next batch's rows are scattered over the dataset: fetch them during this step.
        if start + n < args.N:
            prefetch_inputs_later(args, args.perm + start + n,
                                  min(args.batch_size, args.N - start - n), C0, 0, C0)
        loss = net_step(net, &s, n)
        mn_prefetch_flush()
        if not isfinite(loss):
            res.status = EPOCH_NONFINITE_LOSS
            break
        # The accuracy Keras reports uses the predictions made before this batch's update.
        count_step(res, loss * n, count_correct(net_acts(net, L), targets, n, OC), n)
        start += n
        if time_to_check_signals(last_check):
            with gil:
                if PyErr_CheckSignals() != 0:
                    res.status = EPOCH_INTERRUPTED
    mn_prefetch_flush()  # nothing left queued for later kernels on this thread
    mn_set_thread_cap(0)
    return start


cdef struct TeamBoard:
    # What the threads of a team tell each other at the barriers of a step.
    double loss[MAX_TEAM]          # each thread's sum of row losses
    Py_ssize_t correct[MAX_TEAM]   # each thread's rows predicted right
    int finite[MAX_TEAM]           # whether each thread's weight updates stayed finite
    int inputs_finite[MAX_TEAM]    # whether the input rows each thread gathered were finite
                                   # (rows and inputs teams)
    int stop                       # set by thread 0: an EPOCH_* status to stop with,
                                   # STOP_SLOW to end the stretch early, or -1
    double slow_per_batch          # thread 0 ends the stretch once its batches average more
                                   # seconds than this (0: never) ...
    Py_ssize_t slow_min            # ... over at least this many batches,
    double deadline                # or once mn_seconds() passes this (0: never)
    double started                 # when the stretch started
    Py_ssize_t done                # batches the stretch has completed


# board.stop when a team stretch ends early because its steps became slow (the machine got
# busy): not an error; the epoch probes again.
cdef int STOP_SLOW = 100


cdef inline void board_totals(const TeamBoard* board, int size, double* total,
                              Py_ssize_t* correct) noexcept nogil:
    cdef int i
    total[0] = 0
    correct[0] = 0
    for i in range(size):
        total[0] += board.loss[i]
        correct[0] += board.correct[i]


cdef inline bint board_all_finite(const TeamBoard* board, int size) noexcept nogil:
    cdef int i
    for i in range(size):
        if not board.finite[i]:
            return False
    return True


cdef inline bint board_inputs_finite(const TeamBoard* board, int size) noexcept nogil:
    # Whether every thread's gathered input rows were finite (read after the barrier that
    # follows the gathers, and before the next gathers).
    cdef int i
    for i in range(size):
        if not board.inputs_finite[i]:
            return False
    return True


cdef inline bint loss_stops_team(const TeamBoard* board, EpochResult* res, int rank,
                                 bint inputs_finite, double total) noexcept nogil:
    # After the barrier that follows the forward pass: stop (before any update) on Ctrl-C, a
    # non-finite input or a non-finite loss. Every thread sees the same values, so all stop
    # together.
    if board.stop < 0 and inputs_finite and isfinite(total):
        return False
    if rank == 0 and board.stop < 0:
        res.status = EPOCH_NONFINITE_LOSS if inputs_finite else EPOCH_NONFINITE_INPUT
    return True


cdef inline bint update_stops_team(const TeamBoard* board, EpochResult* res, int rank,
                                   int size) noexcept nogil:
    # After the barrier that follows the updates: stop if some thread's update went
    # non-finite (those weights kept their values).
    if board_all_finite(board, size):
        return False
    if rank == 0:
        res.status = EPOCH_NONFINITE_LOSS
    return True


cdef inline void after_step(TeamBoard* board, EpochResult* res, double total,
                            Py_ssize_t correct, Py_ssize_t n, double* last_check) noexcept nogil:
    # Thread 0, once a step is complete: count it, end the stretch if its steps have become
    # slow, and now and then look for Ctrl-C (the others see board.stop after the step's
    # next barrier).
    count_step(res, total, correct, n)
    board.done += 1
    cdef double now = mn_seconds()
    if ((board.slow_per_batch > 0 and board.done >= board.slow_min
            and now - board.started > board.slow_per_batch * board.done)
            or 0 < board.deadline < now):
        board.stop = STOP_SLOW
    if time_to_check_signals(last_check):
        with gil:
            if PyErr_CheckSignals() != 0:
                board.stop = EPOCH_INTERRUPTED


cdef inline void finish_team(const TeamBoard* board, EpochResult* res, Py_ssize_t start,
                             Py_ssize_t* next_start) noexcept nogil:
    # Thread 0, after the loop.
    if board.stop >= 0 and board.stop != STOP_SLOW:
        res.status = board.stop
    next_start[0] = start


# ---- the step skeleton of every team ----------------------------------------------------

cdef struct TeamThread:
    # What one member of a team knows in team_steps.
    const Net* net
    const EpochArgs* args
    TeamBoard* board
    int rank, size
    void* own                      # the team's own per-thread state (e.g. ColumnsThread)

# How a team does its part of a step (see team_steps). forward: gather, forward, loss and
# deltas (it may hold barriers of its own); totals, after the barrier: the batch's summed loss
# and correct rows, returning whether its input rows were finite; update: the weight
# gradients and updates, returning whether every new weight is finite; after (or NULL), once
# the update's prefetches are issued: the next batch's gathers, if the team does them then.
ctypedef void (*TeamForward)(TeamThread*, Py_ssize_t start, Py_ssize_t n,
                             const Step*) noexcept nogil
ctypedef bint (*TeamTotals)(TeamThread*, Py_ssize_t n, double* total,
                            Py_ssize_t* correct) noexcept nogil
ctypedef bint (*TeamUpdate)(TeamThread*, Py_ssize_t n, const Step*) noexcept nogil
ctypedef void (*TeamAfter)(TeamThread*, Py_ssize_t next_start, Py_ssize_t end) noexcept nogil

cdef struct TeamSteps:
    TeamForward forward
    TeamTotals totals
    TeamUpdate update
    TeamAfter after


cdef Py_ssize_t team_steps(const TeamSteps* steps, TeamThread* t, Py_ssize_t start,
                           Py_ssize_t end, EpochResult* res,
                           double* last_check) noexcept nogil:
    """The batches starting at rows start.. < end, on every member of a team alike: the
    team's forward, a barrier, its totals (every member sees the same, so all stop together
    on Ctrl-C or a non-finite input or loss, before any update), its update, a barrier, and
    a stop if some update went non-finite. Two barriers a step (and the team's own); thread
    0 keeps the counts and looks for Ctrl-C. Returns the next start."""
    cdef Py_ssize_t n, correct
    cdef double total
    cdef bint inputs_finite
    cdef Step s
    while start < end:
        n = batch_rows(t.args, start)
        step_for(t.args, start, &s)
        steps.forward(t, start, n, &s)
        mn_team_barrier()
        inputs_finite = steps.totals(t, n, &total, &correct)
        if loss_stops_team(t.board, res, t.rank, inputs_finite, total):
            break
        t.board.finite[t.rank] = steps.update(t, n, &s)
        mn_prefetch_flush()
        if steps.after != NULL:
            steps.after(t, start + n, end)
        mn_team_barrier()  # updates done; nobody reads this step's buffers any more
        if update_stops_team(t.board, res, t.rank, t.size):
            break
        start += n
        if t.rank == 0:
            after_step(t.board, res, total, correct, n, last_check)
    return start


cdef void run_team(const TeamSteps* steps, TeamThread* t, Py_ssize_t start, Py_ssize_t end,
                   EpochResult* res, double* last_check,
                   Py_ssize_t* next_start) noexcept nogil:
    # team_steps on one thread, its kernels kept to it, and thread 0's wrap-up.
    mn_set_thread_cap(1)
    start = team_steps(steps, t, start, end, res, last_check)
    if t.rank == 0:
        finish_team(t.board, res, start, next_start)
    mn_prefetch_flush()  # nothing left queued for later kernels on this thread
    mn_set_thread_cap(0)


cdef inline void team_thread(TeamThread* t, const Net* net, const EpochArgs* args,
                             TeamBoard* board, void* own) noexcept nogil:
    t.net = net
    t.args = args
    t.board = board
    t.rank = mn_team_rank()
    t.size = mn_team_size()
    t.own = own


# ---- the rows team -------------------------------------------------------------------------

cdef void rows_forward(TeamThread* t, Py_ssize_t start, Py_ssize_t n,
                       const Step* s) noexcept nogil:
    """This thread's block of the batch's rows gathered, forwarded and back-propagated (rows
    are independent), and the next batch's block of rows prefetched."""
    cdef const Net* net = t.net
    cdef const EpochArgs* args = t.args
    cdef TeamBoard* board = t.board
    cdef int rank = t.rank
    cdef Py_ssize_t L = net.n_layers, C0 = width(net, 0), OC = net.n_outputs
    cdef Py_ssize_t r0, r1, nr, c0, c1
    cdef float* targets = net_acts(net, L + 1)
    block_of(n, rank, t.size, &r0, &r1)
    nr = r1 - r0
    board.loss[rank] = 0
    board.correct[rank] = 0
    board.inputs_finite[rank] = True
    if nr > 0:
        board.inputs_finite[rank] = gather_inputs(net.a + r0 * C0, args,
                                                  args.perm + start + r0, nr, C0, 0, C0)
        gather_rows(targets + r0 * OC, args.y, args.perm + start + r0, nr, OC)
        if start + n < args.N:
            block_of(min(args.batch_size, args.N - start - n), rank, t.size, &c0, &c1)
            prefetch_inputs_later(args, args.perm + start + n + c0, c1 - c0, C0, 0, C0)
    # A net with batch statistics has barriers inside its forward and backward: every
    # thread goes through them (a non-finite input then stops the step after them).
    if (nr > 0 and board.inputs_finite[rank]) or net.batch_statistics:
        board.loss[rank] = forward_backward_rows(net, s, r0, r1, n, <float*>t.own)
        board.correct[rank] = count_correct(net_acts(net, L) + r0 * OC, targets + r0 * OC,
                                            nr, OC)
    if rank == 0 and net.has_l2:
        board.loss[0] += l2_penalty(net) * n  # params are only read until the barrier


cdef bint rows_totals(TeamThread* t, Py_ssize_t n, double* total,
                      Py_ssize_t* correct) noexcept nogil:
    board_totals(t.board, t.size, total, correct)
    return board_inputs_finite(t.board, t.size)


cdef bint rows_update(TeamThread* t, Py_ssize_t n, const Step* s) noexcept nogil:
    # This thread's block of every layer's kernel-gradient rows, and its part of the biases.
    return row_blocks_update(t.net, s, 0, t.rank, t.size, n)


cdef TeamSteps ROWS_TEAM = TeamSteps(rows_forward, rows_totals, rows_update, NULL)


cdef void rows_team_member(const Net* net, const EpochArgs* args, Py_ssize_t start,
                           Py_ssize_t end, TeamBoard* board, EpochResult* res,
                           double* last_check, Py_ssize_t* next_start) noexcept nogil:
    """One thread of a team running the batches starting at rows start.. < end, split by
    rows: its own block of each batch's rows forward and back, then its own block of every
    layer's kernel-gradient rows (and biases). Each element is computed by the same
    operations as on one thread, so the weights are the same bits."""
    cdef TeamThread t
    team_thread(&t, net, args, board, NULL)
    t.own = <void*>thread_workspace(net, t.rank) if not net.dense_only else NULL
    run_team(&ROWS_TEAM, &t, start, end, res, last_check, next_start)


# One thread's part of a team stretch: rows_team_member, columns_team_member or
# inputs_team_member (their arguments are team_stretch's).
ctypedef void (*TeamMember)(const Net*, const EpochArgs*, Py_ssize_t, Py_ssize_t, TeamBoard*,
                            EpochResult*, double*, Py_ssize_t*) noexcept nogil

# The kind of team the last team stretch ran, for tests (_last_team).
cdef enum:
    TEAM_NONE = 0
    TEAM_ROWS = 1
    TEAM_COLUMNS = 2
    TEAM_INPUTS = 3
cdef int last_team = TEAM_NONE


cdef Py_ssize_t team_stretch(const Net* net, const EpochArgs* args, Py_ssize_t start,
                             Py_ssize_t end, int threads, double slow_per_batch,
                             Py_ssize_t slow_min, double seconds, EpochResult* res,
                             double* last_check) noexcept nogil:
    """The batches starting at rows start.. < end on a team of threads, ended early when,
    after at least slow_min of them, they average more than slow_per_batch seconds (0:
    never), or when they have taken more than `seconds` (0: no limit). Returns the next
    start."""
    cdef TeamBoard board
    cdef Py_ssize_t next_start = start
    cdef TeamMember member = rows_team_member
    global last_team
    board.stop = -1
    board.slow_per_batch = slow_per_batch
    board.slow_min = slow_min
    board.started = mn_seconds()
    board.deadline = board.started + seconds if seconds > 0 else 0
    board.done = 0
    threads = min(threads, MAX_TEAM)
    last_team = TEAM_ROWS
    if splits_inputs(net, threads):
        member, threads, last_team = inputs_team_member, 2, TEAM_INPUTS
    elif splits_first_layer(net, threads):
        member, last_team = columns_team_member, TEAM_COLUMNS
    with parallel(num_threads=threads):
        # OpenMP may give fewer threads than asked for; never more.
        member(net, args, start, end, &board, res, last_check, &next_start)
    return next_start


# The epoch times PROBE_BATCHES steps on one thread and as many on the team, then runs a
# stretch the faster way, and probes again: on a busy machine a team waits for descheduled
# threads at every barrier, and load comes and goes (another library's thread pool spinning
# for a while after its last call, say: NumPy's OpenBLAS workers spin for ~0.1 s, and 32
# batches of a team probe then took 18 ms instead of 0.9 on one thread). So the team's
# stretches end early once they fall behind: a probe as soon as it has taken as long as the
# whole one-thread probe (it cannot win any more), a run of RUN_BATCHES after a won probe
# once it averages SLOW_FACTOR times slower than that probe, or slower than the one-thread
# probe (after RUN_MIN_BATCHES: with one core busy, the cross-entropy net's 60,000-row epoch
# on the team went from 1.16-1.30x the one-thread epoch to 1.02-1.17x, in runs alternating
# with the build before). After a
# lost probe the one-thread stretch starts at SHORT_RUN_BATCHES (fewer if they would take more
# than SHORT_RUN_SECONDS) and doubles with each further loss, up to RUN_BATCHES, so a passing
# load costs little more than itself. A probe of long batches ends after PROBE_SECONDS (and at
# least MIN_PROBE_BATCHES): 32 one-thread batches of the convnet took 1.0 s of its 9 s epoch,
# 0.45 s more than on the team. The weights are the same bits every way.
cdef Py_ssize_t PROBE_BATCHES = 32
cdef Py_ssize_t MIN_PROBE_BATCHES = 4
cdef double PROBE_SECONDS = 0.05
cdef Py_ssize_t RUN_BATCHES = 1024
cdef Py_ssize_t RUN_MIN_BATCHES = 16
cdef Py_ssize_t SHORT_RUN_BATCHES = 64
cdef double SHORT_RUN_SECONDS = 0.25
cdef double SLOW_FACTOR = 3.0
# How train_epoch schedules its batches: SCHEDULE_AUTO (the probes decide), or always on one
# thread, or always on the team, or nothing but probes (each pair's one-thread then team
# probe, whatever they measure, however short the epoch). Results are the same bits every
# way; tests force each.
cdef enum:
    SCHEDULE_AUTO = 0
    SCHEDULE_SERIAL = 1
    SCHEDULE_TEAM = 2
    SCHEDULE_PROBES = 3
cdef int epoch_schedule = SCHEDULE_AUTO


# An epoch whose work would take less than SHORT_EPOCH_SECONDS on one thread runs on one
# thread: its probes could not pay for themselves. The estimate is the work of its rows (their
# FLOPs at ONE_THREAD_FLOPS, and their input bytes at ONE_THREAD_BYTES, rough upper bounds of
# a core's speed), never the number of rows alone: a 12,000-image convnet epoch (14 MFLOP an
# image) probes and runs on the team; a 12,000-row perceptron epoch (31 kFLOP and 3 kB a row,
# about 8 ms) runs on one thread, its 60,000-row epoch probes.
cdef double SHORT_EPOCH_SECONDS = 0.03
cdef double ONE_THREAD_FLOPS = 100e9
cdef double ONE_THREAD_BYTES = 10e9


cdef inline bint too_short_to_probe(const Net* net, Py_ssize_t N) noexcept nogil:
    cdef double row_seconds = (net.train_flops / ONE_THREAD_FLOPS
                               + width(net, 0) * sizeof(float) / ONE_THREAD_BYTES)
    return N * row_seconds < SHORT_EPOCH_SECONDS


cdef Py_ssize_t serial_probe(const Net* net, const EpochArgs* args, Py_ssize_t start,
                             EpochResult* res, double* last_check) noexcept nogil:
    """The one-thread probe from row start: PROBE_BATCHES batches, or fewer (at least
    MIN_PROBE_BATCHES) once they have taken PROBE_SECONDS. Returns the next start."""
    cdef Py_ssize_t N = args.N, bs = args.batch_size, end = min(N, start + PROBE_BATCHES * bs)
    cdef double t0 = mn_seconds()
    start = serial_stretch(net, args, start, min(end, start + MIN_PROBE_BATCHES * bs), res,
                           last_check)
    while start < end and res.status == EPOCH_DONE and mn_seconds() - t0 < PROBE_SECONDS:
        start = serial_stretch(net, args, start, min(end, start + bs), res, last_check)
    return start


cdef Py_ssize_t probed_stretch(const Net* net, const EpochArgs* args, Py_ssize_t start,
                               int threads, Py_ssize_t* serial_run, bint probes_only,
                               EpochResult* res, double* last_check) noexcept nogil:
    """Probe both ways from row start, then (unless probes_only) run a stretch (or the
    rest of the epoch) the faster way; serial_run carries the one-thread stretch after a
    team loss from one call to the next. Returns the next start."""
    cdef Py_ssize_t N = args.N, bs = args.batch_size, probe, first
    cdef double t0 = mn_seconds(), serial_time, team_time, team_per_batch
    cdef Py_ssize_t run
    first = start
    start = serial_probe(net, args, start, res, last_check)
    serial_time = mn_seconds() - t0
    probe = (start - first) // bs  # batches
    if res.status != EPOCH_DONE or start >= N:
        return start
    t0 = mn_seconds()
    first = start
    start = team_stretch(net, args, start, min(N, start + probe * bs), threads, 0, 0,
                         serial_time, res, last_check)
    team_time = mn_seconds() - t0
    team_per_batch = team_time / max(1, (start - first) // bs)
    if res.status != EPOCH_DONE or start >= N or probes_only:
        return start
    if team_per_batch * probe < serial_time:
        serial_run[0] = 0  # the next loss starts short again
        # The run ends once it averages slower than its probe allows, or than one thread.
        return team_stretch(net, args, start, min(N, start + RUN_BATCHES * bs), threads,
                            min(SLOW_FACTOR * team_per_batch, serial_time / probe),
                            RUN_MIN_BATCHES, 0, res, last_check)
    # A lost probe may have waited long for a descheduled thread: run one thread long
    # enough that probing costs at most a fifth of the time.
    if serial_run[0] == 0:
        serial_run[0] = max(MIN_PROBE_BATCHES, min(
            SHORT_RUN_BATCHES, <Py_ssize_t>(SHORT_RUN_SECONDS / serial_time * probe)))
    run = max(serial_run[0], <Py_ssize_t>(4 * team_time / serial_time * probe))
    serial_run[0] = min(2 * serial_run[0], RUN_BATCHES)
    return serial_stretch(net, args, start, min(N, start + min(run, RUN_BATCHES) * bs), res,
                          last_check)


cdef EpochResult train_epoch(const Net* net, const EpochArgs* args) noexcept nogil:
    """Minibatch training over x[perm] in order, batch_size rows at a time (the last batch
    may be smaller). Stops early on a non-finite loss (before that batch's update) or when a
    signal handler raises (between two steps), so params always hold a completed step."""
    cdef EpochResult res
    res.loss_sum = 0
    res.correct = 0
    res.seen = 0
    res.batches = 0
    res.status = EPOCH_DONE
    cdef double last_check = mn_seconds()
    cdef int threads = mn_get_num_threads()
    cdef Py_ssize_t start = 0, N = args.N, batch_size = args.batch_size
    cdef Py_ssize_t serial_run = 0  # not yet lost a probe
    cdef Net t = for_training(net)
    net = &t
    if not net.dense_only:  # each thread of a team needs its workspace
        threads = min(threads, net.team_threads)
    if threads < 2 or batch_size < threads or epoch_schedule == SCHEDULE_SERIAL:
        serial_stretch(net, args, 0, N, &res, &last_check)
    elif epoch_schedule == SCHEDULE_TEAM:
        team_stretch(net, args, 0, N, threads, 0, 0, 0, &res, &last_check)
    elif epoch_schedule == SCHEDULE_PROBES:
        while start < N and res.status == EPOCH_DONE:
            start = probed_stretch(net, args, start, threads, &serial_run, True, &res,
                                   &last_check)
    elif batch_size < 2 * threads or too_short_to_probe(net, N):
        serial_stretch(net, args, 0, N, &res, &last_check)
    else:
        while start < N and res.status == EPOCH_DONE:
            start = probed_stretch(net, args, start, threads, &serial_run, False, &res,
                                   &last_check)
    end_training(net)
    return res
