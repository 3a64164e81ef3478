# The epoch: gathering batches, stretches of batches on one thread or on a team of threads,
# and the timed probes that choose between them (included by _kernels.pyx).
#
# Teams: phase 1 of a step splits the batch's rows (each sample's forward and deltas are its
# own); phase 2 splits each kernel gradient by its rows (outputs), every thread summing over the
# whole batch in the same order. Nothing is split along a reduction axis, so the weights are the
# same bits at any thread count. Dense nets trained by SGD have two faster teams on top: the
# first layer split by output columns (columns_team_member), and a one-layer net split by inputs
# (inputs_team_member).

cdef inline void gather_rows(float* dst, const float* src, const long long* rows,
                             Py_ssize_t n, Py_ssize_t width) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(n):
        memcpy(dst + r * width, src + rows[r] * width, width * sizeof(float))


cdef bint gather_inputs(float* dst, const float* x, const long long* rows, Py_ssize_t n,
                        Py_ssize_t width, Py_ssize_t k0, Py_ssize_t k1) noexcept nogil:
    # Columns k0..k1 of rows of x (row width `width`), packed: dst (n, k1 - k0). Returns
    # whether they are all finite (the epoch's check of its inputs).
    cdef Py_ssize_t r
    cdef bint finite = True
    for r in range(n):
        finite &= mn_copy_finite(dst + r * (k1 - k0), x + rows[r] * width + k0, k1 - k0)
    return finite


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
        if not gather_inputs(net.a, args.x, args.perm + start, n, C0, 0, C0):
            res.status = EPOCH_NONFINITE_INPUT  # before this batch's step
            break
        gather_rows(targets, args.y, args.perm + start, n, OC)
        # The next batch's rows are scattered over the dataset: fetch them during this step.
        if start + n < args.N:
            mn_prefetch_rows_later(args.x, args.perm + start + n,
                                   min(args.batch_size, args.N - start - n), C0)
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


cdef inline bint splits_first_layer(const Net* net, int threads) noexcept nogil:
    # Split the first layer by output columns when the workspace has room for the team, each
    # thread gets at least two vectors of columns, and the activation is elementwise (softmax
    # needs whole rows).
    return (dense_fast_paths(net) and threads <= net.team_threads and net.n_layers >= 2
            and net.plan[0].act != ACT_SOFTMAX
            and width(net, 1) >= 2 * COLUMN_ALIGN * threads)


cdef inline float* thread_area(const Net* net, int rank) noexcept nogil:
    # A dense net's thread rank >= 1: its input rows, then its params copy, then its grads
    # copy (after the first layer's two blocks).
    cdef Py_ssize_t C0 = width(net, 0), H = width(net, 1)
    return (workspace(net) + 2 * C0 * H
            + (rank - 1) * (net.rows * C0 + 2 * net.n_params))


cdef void copy_columns(float* dst, Py_ssize_t ld_dst, const float* src, Py_ssize_t ld_src,
                       Py_ssize_t rows, Py_ssize_t width) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(rows):
        memcpy(dst + r * ld_dst, src + r * ld_src, width * sizeof(float))


cdef void first_layer_columns_forward(const Net* net, const float* inp, const float* w,
                                      Py_ssize_t n, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """Columns j0..j1 of the first layer's output for the n rows inp, activation applied,
    from w: those columns of its weights as a contiguous (C0, j1 - j0) block."""
    cdef Py_ssize_t r, C = width(net, 0), H = width(net, 1), cols = j1 - j0
    cdef float* h = net_acts(net, 1) + j0
    mn_sgemm_strided(h, H, inp, C, 1, w, cols, net.params + C * H + j0, n, C, cols)
    for r in range(n):
        activation_forward(<int>net.plan[0].act, h + r * H, 1, cols)


cdef bint first_layer_columns_update(const Net* net, const float* inp, float* w, float* g,
                                     Py_ssize_t n, Py_ssize_t j0, Py_ssize_t j1,
                                     float learning_rate) noexcept nogil:
    """Gradient g and SGD update of w, the contiguous (C0, j1 - j0) copy of columns j0..j1 of
    the first layer's weights, and of those columns of its bias (in place), for the n input
    rows inp. Returns whether every updated value stayed finite."""
    cdef Py_ssize_t C = width(net, 0), H = width(net, 1), cols = j1 - j0
    cdef float* bias = net.params + C * H
    cdef float* dbias = net.grads + C * H
    cdef const float* dz = grad_region(net, 0)
    cdef bint finite = mn_sgemm_sgd(g, cols, inp, 1, C, dz + j0, H, w, cols, learning_rate,
                                    C, n, cols)
    mn_column_sums_block(dbias, dz, j0, j1, n, H)
    return finite & sgd_update(bias + j0, dbias + j0, learning_rate, cols)


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


cdef void rows_team_member(const Net* net, const EpochArgs* args, Py_ssize_t start,
                           Py_ssize_t end, TeamBoard* board, EpochResult* res,
                           double* last_check, Py_ssize_t* next_start) noexcept nogil:
    """One thread of a team running the batches starting at rows start.. < end, split by
    rows. Each thread gathers, forwards and back-propagates its own block of the batch's rows
    (rows are independent), then, after a barrier, computes and applies its own block of
    every layer's kernel-gradient rows (and whole biases, layer l on thread l % size). Each
    element is computed by the same operations as on one thread, so the weights are the same
    bits. Two barriers a step; thread 0 keeps the counts and looks for Ctrl-C."""
    cdef int rank = mn_team_rank(), size = mn_team_size()
    cdef Py_ssize_t L = net.n_layers, C0 = width(net, 0), OC = net.n_outputs
    cdef Py_ssize_t n, r0, r1, nr, c0, c1, correct
    cdef float* targets = net_acts(net, L + 1)
    cdef float* ws = thread_workspace(net, rank) if not net.dense_only else NULL
    cdef double total
    cdef Step s
    mn_set_thread_cap(1)
    while start < end:
        n = batch_rows(args, start)
        step_for(args, start, &s)
        block_of(n, rank, size, &r0, &r1)
        nr = r1 - r0
        board.loss[rank] = 0
        board.correct[rank] = 0
        board.inputs_finite[rank] = True
        if nr > 0:
            board.inputs_finite[rank] = gather_inputs(net.a + r0 * C0, args.x,
                                                      args.perm + start + r0, nr, C0, 0, C0)
            gather_rows(targets + r0 * OC, args.y, args.perm + start + r0, nr, OC)
            if start + n < args.N:
                block_of(min(args.batch_size, args.N - start - n), rank, size, &c0, &c1)
                mn_prefetch_rows_later(args.x, args.perm + start + n + c0, c1 - c0, C0)
        # A net with batch statistics has barriers inside its forward and backward: every
        # thread goes through them (a non-finite input then stops the step after them).
        if (nr > 0 and board.inputs_finite[rank]) or net.batch_statistics:
            board.loss[rank] = forward_backward_rows(net, &s, r0, r1, n, ws)
            board.correct[rank] = count_correct(net_acts(net, L) + r0 * OC,
                                                targets + r0 * OC, nr, OC)
        if rank == 0 and net.has_l2:
            board.loss[0] += l2_penalty(net) * n  # params are only read until the barrier
        mn_team_barrier()
        board_totals(board, size, &total, &correct)
        if loss_stops_team(board, res, rank, board_inputs_finite(board, size), total):
            break
        board.finite[rank] = row_blocks_update(net, &s, 0, rank, size, n)
        mn_prefetch_flush()
        mn_team_barrier()
        if update_stops_team(board, res, rank, size):
            break
        start += n
        if rank == 0:
            after_step(board, res, total, correct, n, last_check)
    if rank == 0:
        finish_team(board, res, start, next_start)
    mn_prefetch_flush()  # nothing left queued for later kernels on this thread
    mn_set_thread_cap(0)


cdef void columns_team_member(const Net* net, const EpochArgs* args, Py_ssize_t start,
                              Py_ssize_t end, TeamBoard* board, EpochResult* res,
                              double* last_check, Py_ssize_t* next_start) noexcept nogil:
    """One thread of a team running the batches starting at rows start.. < end, with the
    first layer split by output columns (splits_first_layer: dense nets trained by SGD).

    Moving data between cores is what costs here, so each thread keeps its own copies:
    - its columns of the first layer's weights and gradient, as contiguous blocks (a column
      block of a shared row-major matrix interleaves the threads' cache lines, and the
      prefetchers then pull each other's lines back and forth: the update ran 2.5x slower);
    - all the batch's input rows (it gathers them itself);
    - the other layers' weights, which every thread updates alike from the whole batch
      (thread 0 in place; the others in their areas of the workspace).
    What crosses between cores is the first layer's output and the deltas: each thread
    computes its columns of the first layer for all rows, then (barrier) the other layers
    forward and back for its block of rows, then (barrier) its updates, then gathers the next
    batch (barrier). Each element is computed by the same operations as on one thread, so
    the weights are the same bits."""
    cdef int rank = mn_team_rank(), size = mn_team_size()
    cdef Py_ssize_t L = net.n_layers, C0 = width(net, 0), H = width(net, 1), OC = net.n_outputs
    cdef Py_ssize_t n, r0, r1, nr, j0, j1, cols, upper, correct
    cdef float* targets = net_acts(net, L + 1)
    cdef double total
    cdef Step s
    cdef Net mine = net[0]
    cdef float* inp = net.a
    column_block(H, rank, size, &j0, &j1)
    cols = j1 - j0
    cdef float* w0 = workspace(net) + C0 * j0
    cdef float* g0 = workspace(net) + C0 * H + C0 * j0
    copy_columns(w0, cols, net.params + j0, H, C0, cols)
    if rank > 0:
        inp = thread_area(net, rank)
        mine.params = inp + net.rows * C0
        mine.grads = mine.params + net.n_params
        upper = net.plan[1].param  # the first layer's weights are in w0
        memcpy(mine.params + upper, net.params + upper,
               (net.n_params - upper) * sizeof(float))
    mn_set_thread_cap(1)
    # Every thread gathers every input row, so each knows itself whether they are finite
    # (a flag on the board could already hold the next batch's when another thread reads it).
    cdef bint inputs_finite = True
    if start < end:
        inputs_finite = gather_batch(net, inp, args, start, rank, size)
    mn_team_barrier()  # every copy is made before thread 0 updates net.params
    while start < end:
        n = batch_rows(args, start)
        step_for(args, start, &s)
        block_of(n, rank, size, &r0, &r1)
        nr = r1 - r0
        first_layer_columns_forward(net, inp, w0, n, j0, j1)
        board.loss[rank] = 0
        board.correct[rank] = 0
        mn_team_barrier()  # the whole first-layer output is there
        if nr > 0:
            forward_rows(&mine, &s, 1, net_acts(net, 1) + r0 * H, net_acts(net, L) + r0 * OC,
                         r0, nr)
            board.loss[rank] = loss_forward(net.loss, net_acts(net, L) + r0 * OC,
                                            targets + r0 * OC, nr, OC) * nr
            board.correct[rank] = count_correct(net_acts(net, L) + r0 * OC,
                                                targets + r0 * OC, nr, OC)
            deltas_rows(&mine, &s, targets, r0, r1, n, NULL)
        mn_team_barrier()  # every row's deltas are there
        board_totals(board, size, &total, &correct)
        if loss_stops_team(board, res, rank, inputs_finite, total):
            break
        board.finite[rank] = (
            first_layer_columns_update(net, inp, w0, g0, n, j0, j1, s.learning_rate)
            & row_blocks_update(&mine, &s, 1, 0, 1, n))
        mn_prefetch_flush()
        if start + n < end:
            inputs_finite = gather_batch(net, inp, args, start + n, rank, size)
        mn_team_barrier()  # updates done; nobody reads this step's buffers any more
        if update_stops_team(board, res, rank, size):
            break
        start += n
        if rank == 0:
            after_step(board, res, total, correct, n, last_check)
    # The weights of the last completed step (and its gradient) back into net.params.
    copy_columns(net.params + j0, H, w0, cols, C0, cols)
    copy_columns(net.grads + j0, H, g0, cols, C0, cols)
    if rank == 0:
        finish_team(board, res, start, next_start)
    mn_prefetch_flush()  # nothing left queued for later kernels on this thread
    mn_set_thread_cap(0)


cdef inline bint splits_inputs(const Net* net, int threads) noexcept nogil:
    # A one-layer net that trains transposed, with inputs wide enough for two pieces and a
    # workspace with room for the second thread's area (inputs_team_member's layout).
    cdef Py_ssize_t C0 = width(net, 0), OC = width(net, 1), rows = net.rows
    return (threads >= 2 and net.team_threads >= 2 and net.n_layers == 1
            and net.w0t != NULL and C0 >= 4 * COLUMN_ALIGN
            and rows * (C0 - narrow_split(net) + 5 * OC) + 2 * OC
                <= rows * C0 + 2 * net.n_params)


cdef void inputs_team_member(const Net* net, const EpochArgs* args, Py_ssize_t start,
                             Py_ssize_t end, TeamBoard* board, EpochResult* res,
                             double* last_check, Py_ssize_t* next_start) noexcept nogil:
    """One of the two threads of a team running the batches starting at rows start.. < end
    of a one-layer net that trains transposed (splits_inputs), each thread with one piece of
    the inputs (narrow_split), the perceptron's case.

    Each thread gathers only its piece of the batch's input rows (so every input byte crosses
    from memory to one core only), computes its piece's dot products, and after a barrier
    adds both pieces (as transposed_first_layer_forward does), then computes the loss and the
    deltas of the whole batch itself (a few hundred floats), and the gradient and update of
    its own columns of w0t from its own rows. The bias is updated by both, thread 0 in
    params, thread 1 in a copy. Only the pieces' sums cross between cores. Two barriers a
    step; the same bits as one thread."""
    cdef int rank = mn_team_rank()
    cdef Py_ssize_t C0 = width(net, 0), OC = width(net, 1), rows = net.rows
    cdef Py_ssize_t split = narrow_split(net), n, correct = 0
    cdef Py_ssize_t k0 = 0 if rank == 0 else split, k1 = split if rank == 0 else C0
    cdef Py_ssize_t cols = k1 - k0
    # Thread 1's area: its inputs piece, both threads' piece sums, then its own targets,
    # outputs, deltas, bias and bias gradient.
    cdef float* area = thread_area(net, 1)
    cdef float* sums0 = area + rows * (C0 - split)
    cdef float* sums1 = sums0 + rows * OC
    cdef float* inp = net.a if rank == 0 else area
    cdef float* targets = net_acts(net, 2) if rank == 0 else sums1 + rows * OC
    cdef float* out = net_acts(net, 1) if rank == 0 else targets + rows * OC
    cdef float* dz = grad_region(net, 0) if rank == 0 else out + rows * OC
    cdef float* bias = net.params + C0 * OC if rank == 0 else dz + rows * OC
    cdef float* dbias = net.grads + C0 * OC if rank == 0 else bias + OC
    cdef float* my_sums = sums0 if rank == 0 else sums1
    cdef double total
    cdef Step s
    if mn_team_size() < 2:  # OpenMP gave one thread: the same steps, serially
        next_start[0] = serial_stretch(net, args, start, end, res, last_check)
        return
    if rank == 1:
        memcpy(bias, net.params + C0 * OC, OC * sizeof(float))
    mn_set_thread_cap(1)
    while start < end:
        n = batch_rows(args, start)
        step_for(args, start, &s)
        board.inputs_finite[rank] = gather_inputs(inp, args.x, args.perm + start, n, C0, k0,
                                                  k1)
        gather_rows(targets, args.y, args.perm + start, n, OC)
        if start + n < args.N:
            mn_prefetch_columns_later(args.x, C0, args.perm + start + n,
                                      min(args.batch_size, args.N - start - n), k0, k1)
        mn_sgemm_nt_strided(my_sums, OC, inp, cols, net.w0t + k0, C0, n, cols, OC)
        mn_team_barrier()  # both pieces' sums are there
        add_pieces(out, sums0, sums1, bias, n, OC)
        activation_forward(<int>net.plan[0].act, out, n, OC)
        total = loss_forward(net.loss, out, targets, n, OC) * n
        if loss_stops_team(board, res, rank, board_inputs_finite(board, 2), total):
            break
        if rank == 0:
            correct = count_correct(out, targets, n, OC)
        output_deltas(net, dz, out, targets, n, n)
        mn_column_sums(dbias, dz, n, OC)
        board.finite[rank] = (
            mn_sgemm_sgd(net.g0t + k0, C0, dz, 1, OC, inp, cols, net.w0t + k0, C0,
                         s.learning_rate, OC, n, cols)
            & sgd_update(bias, dbias, s.learning_rate, OC))
        mn_prefetch_flush()
        mn_team_barrier()  # updates done; nobody reads this step's sums any more
        if update_stops_team(board, res, rank, 2):
            break
        start += n
        if rank == 0:
            after_step(board, res, total, correct, n, last_check)
    if rank == 0:
        finish_team(board, res, start, next_start)
    mn_prefetch_flush()  # nothing left queued for later kernels on this thread
    mn_set_thread_cap(0)


cdef bint gather_batch(const Net* net, float* inp, const EpochArgs* args, Py_ssize_t start,
                       int rank, int size) noexcept nogil:
    """For the column team: all input rows of the batch starting at start into this
    thread's inp, its block of target rows into the shared targets, and a prefetch of the
    next batch's input rows. Returns whether the input rows are all finite."""
    cdef Py_ssize_t C0 = width(net, 0), OC = net.n_outputs, r0, r1
    cdef Py_ssize_t n = batch_rows(args, start)
    block_of(n, rank, size, &r0, &r1)
    cdef bint finite = gather_inputs(inp, args.x, args.perm + start, n, C0, 0, C0)
    gather_rows(net_acts(net, net.n_layers + 1) + r0 * OC, args.y, args.perm + start + r0,
                r1 - r0, OC)
    if start + n < args.N:
        mn_prefetch_rows_later(args.x, args.perm + start + n,
                               min(args.batch_size, args.N - start - n), C0)
    return finite


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
# once it averages SLOW_FACTOR times slower than that probe (after RUN_MIN_BATCHES). After a
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
        return team_stretch(net, args, start, min(N, start + RUN_BATCHES * bs), threads,
                            SLOW_FACTOR * team_per_batch, RUN_MIN_BATCHES, 0, res,
                            last_check)
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
    elif batch_size < 2 * threads or N < 4 * PROBE_BATCHES * batch_size:
        serial_stretch(net, args, 0, N, &res, &last_check)
    else:
        while start < N and res.status == EPOCH_DONE:
            start = probed_stretch(net, args, start, threads, &serial_run, False, &res,
                                   &last_check)
    end_training(net)
    return res
